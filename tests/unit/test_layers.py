"""The house rules (ARCHITECTURE.md): imports flow one way (import-linter's contracts in
setup.cfg, as ``make lint`` runs them), modules and functions stay small, and a function-level
import says why it is one."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("hypervm", "vmimage", "executor", "scheduler")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "setup.cfg"),
                           "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, check=False)


def test_the_tree_keeps_the_layer_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


@pytest.mark.parametrize(("module", "wrong_import", "contract"), [
    ("hypervm/errors.py", "import executor.vm", "the core at the bottom"),
    ("vmimage/boot.py", "from executor.libvirt import domain", "the core at the bottom"),
    ("scheduler/model.py", "import vmimage.images", "the scheduler imports only the core"),
    ("executor/vm.py", "from executor.cli import gc", "inside executor"),
    ("executor/libvirt/domain.py", "import executor.pool.protocol", "inside executor"),
])
def test_a_back_import_breaks_the_contract(tree_copy: Path, module: str, wrong_import: str,
                                           contract: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{wrong_import}  # deliberately wrong\n")
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and contract in result.stdout, result.stdout


def _python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_modules_and_functions_stay_small() -> None:
    too_big = []
    for path in _python_files():
        source = path.read_text()
        rel = path.relative_to(REPO)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{rel}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert not too_big, "\n".join(too_big)


def test_function_level_imports_say_why() -> None:
    """Only for a cycle or an optional dependency, with a comment on the line or above it."""
    silent = []
    for path in _python_files():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    line = lines[inner.lineno - 1]
                    above = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
                    if "#" not in line and not above.startswith("#"):
                        silent.append(f"{path.relative_to(REPO)}:{inner.lineno}: {line.strip()}")
    assert not silent, "\n".join(sorted(set(silent)))
