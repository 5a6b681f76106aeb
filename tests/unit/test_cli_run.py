"""``hypervm run`` argument handling: bad input is one clear line and a non-zero exit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from executor.cli import main as cli
from executor.cli.run import command_from, parse_user
from hypervm.errors import InvalidSpec


def test_parse_user() -> None:
    assert parse_user(None) == (0, 0)
    assert parse_user("1000") == (1000, 1000)
    assert parse_user("1000:50") == (1000, 50)
    with pytest.raises(InvalidSpec, match="--user"):
        parse_user("bob")


def test_command_strips_separator() -> None:
    assert command_from(["--", "sh", "-c", "x"]) == ("sh", "-c", "x")
    with pytest.raises(InvalidSpec, match="no command"):
        command_from(["--"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--rootfs", "/nonexistent-rootfs", "--", "true"], "--rootfs: /nonexistent"),
        (["run", "--memory", "8", "--rootfs", "/", "--", "true"], "memory: 8 MiB is below"),
        (["run", "--rootfs", "/", "-e", "=NOKEY", "--", "true"], "--env"),
        (["run", "--rootfs", "/"], "no command given"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str,
                               capsys: pytest.CaptureFixture[str], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERVM_STATE_DIR", str(tmp_path))
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status != 0
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 125  # a usage error, hypervm's own (docker's 125)
    assert "usage: hypervm" in capsys.readouterr().err


def test_a_closed_pipe_is_no_traceback() -> None:
    """``hypervm … | head``: the reader leaves early; no traceback, exit 141 (as cat)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    # ``pool status`` printing ~1 MB (a fake pool), read for 10 bytes
    code = ("import sys, executor.cli.main as c, executor.pool.claim as w\n"
            "w.status = lambda cfg: {str(i): 'z' * 200 for i in range(5000)}\n"
            "sys.exit(c.main(['pool', 'status']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err
    assert "Traceback" not in err


def test_a_cold_foreground_run_imports_only_what_it_uses() -> None:
    """``hypervm run``'s modules leave out what only a pool claim, a snapshot start, a -d/-t
    run (executor.cli.detach, the supervisor's box), the distro kernel, a ``-v`` directory's
    hand-back (ctypes) or a configuration file
    (tomllib) use, what only a pull or gc uses (the image store's unpack with tarfile, gc,
    sources, its progress lines, blob verification, the pull itself with the manifests: ~13 ms
    of import CPU; a cached image needs none of them), what only a tenant's pull checks
    (authorize, credentials, skopeo), and what is first needed once the domain is created
    (the guest channel client, tenacity's waits, the network policy and its thread's Future,
    the output relay: executor.cli.follow and executor.runner) or a uuid (and platform,
    uuid's import), socket (a pool's socket or published ports), subprocess and selectors (a
    build, the KVM probe), tempfile and random (a --rootfs run, a pull, a cache write), shutil
    with bz2 and lzma (a build, a pull, the VM's end; argparse's own formatter imports it for
    the terminal's width, ours does not: executor.cli.usage.LineFormatter), the values of a
    domain listing and of libvirt's events (executor.libvirt.events), hashlib with OpenSSL's
    libcrypto (~2.3 ms; what is hashed before createXML is small: hypervm.digest): each is
    milliseconds of every cold run before its VM is created (issue 17: a cold run within 1.3 x
    the raw boot). tests/integration/test_run_image_cli.py checks the modules loaded when a
    real run's createXML begins."""
    code = ("import sys, executor.cli.fastrun, executor.cli.main as m, executor.cli.run, "
            "vmimage.boot; m.build_parser(['run', 'busybox', '--', 'true']); "
            "print(sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert "executor.vm" in loaded and "executor.cli.run_inputs" in loaded  # the real modules
    for unused in ("executor.pool.adopt", "executor.pool.claim", "executor.snapshot.start",
                   "executor.session", "executor.cli.console", "vmimage.kernel.distro",
                   "ctypes", "tomllib", "executor.guest.channel", "tenacity", "uuid",
                   "platform", "vmimage.images.unpack", "vmimage.images.gc", "tarfile",
                   "vmimage.images.sources", "vmimage.images.pull_progress",
                   "vmimage.images.verify", "executor.netpolicy", "concurrent.futures",
                   "executor.cli.follow", "executor.runner", "vmimage.images.authorize",
                   "vmimage.images.credentials", "vmimage.images.skopeo",
                   "vmimage.images.pull", "vmimage.images.manifest", "executor.cli.detach",
                   "executor.supervisor.box", "socket", "subprocess", "selectors",
                   "tempfile", "random", "vmimage.rootfs", "shutil", "bz2", "lzma",
                   "executor.libvirt.events", "typing", "executor.volume_files",
                   "vmimage.kernel.kconfig", "vmimage.kernel.elfunpad", "vmimage.progress",
                   "hashlib", "_hashlib"):
        assert unused not in loaded, unused


def test_a_cold_runs_cli_leaves_inspect_and_traceback_for_after_its_createxml() -> None:
    """The console script of a cold run (its starter forked) leaves inspect (with ast and dis:
    dataclasses' for a class without a docstring), traceback (with linecache, tokenize,
    textwrap: logging's text of an exception) and ElementPath (an XML's parse) for later:
    ~11 ms of every cold run before its createXML (issue 18). They are loaded at their first
    use (a ``run … true`` has none, task coldend): a class without a docstring still gets
    dataclass's, an exception its text."""
    code = """
import sys, types
from executor.libvirt import starter
starter.defer_modules()
import executor.cli.main as m, executor.cli.run, vmimage.boot
m.build_parser(["run", "busybox", "--", "true"])
print([n for n in starter.LATER_MODULES if type(sys.modules[n]) is types.ModuleType])
print([n for n in ("ast", "dis", "tokenize", "linecache", "textwrap") if n in sys.modules])
import dataclasses
@dataclasses.dataclass
class Bare:
    x: int
print(Bare.__doc__, type(sys.modules["inspect"]) is types.ModuleType)
import traceback
print(traceback.format_exception_only(ValueError("v")), "ast" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.splitlines()
    assert out[:2] == ["[]", "[]"]
    assert out[2] == "Bare(x: int) True"
    assert out[3] == "['ValueError: v\\n'] True"


def test_the_cold_run_paths_dataclasses_have_docstrings() -> None:
    """A dataclass without a docstring of its own gets one made from ``inspect.signature``
    when it is created (~0.1 ms each here): 33 of the 71 dataclasses a cold ``hypervm run``
    creates before its VM did (issue 17)."""
    code = """
import dataclasses, inspect, sys
import executor.cli.main, executor.cli.run, executor.guest.channel
def generated(cls):
    doc = cls.__dict__.get("__doc__")
    return doc is None or doc.startswith(cls.__name__ + "(")
print(sorted(f"{m}.{n}" for m, mod in list(sys.modules.items())
             if m.split(".")[0] in ("executor", "hypervm", "vmimage")
             for n, c in vars(mod).items()
             if inspect.isclass(c) and dataclasses.is_dataclass(c) and c.__module__ == m
             and generated(c)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert ast.literal_eval(out.strip()) == []


def test_the_cold_run_paths_frozen_dataclasses_compile_no_method() -> None:
    """``@dataclass(frozen=True)`` compiles six methods per class with ``exec`` (~0.75 ms a
    class here); the cold run's frozen values are ``hypervm.frozen.frozen_dataclass``es, whose
    methods are shared (``__eq__``, ``__hash__`` and ``__repr__`` ~15 ms less before
    createXML, then ``__init__`` and the frozen guard ~20 ms)."""
    code = """
import dataclasses, inspect, sys
import executor.cli.main, executor.cli.run, executor.guest.channel
def compiled(cls):
    methods = (cls.__dict__.get(name) for name in (
        "__init__", "__eq__", "__hash__", "__repr__", "__setattr__", "__delattr__"))
    return any(getattr(m, "__code__", None) is not None and m.__code__.co_filename == "<string>"
               for m in methods)
print(sorted(f"{m}.{n}" for m, mod in list(sys.modules.items())
             if m.split(".")[0] in ("executor", "hypervm", "vmimage")
             for n, c in vars(mod).items()
             if inspect.isclass(c) and dataclasses.is_dataclass(c) and c.__module__ == m
             and c.__dataclass_params__.frozen and compiled(c)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert ast.literal_eval(out.strip()) == []


GC_PROBE = """
import argparse, gc, sys, types
import executor.cli
from executor.cli import fastrun, main as cli
seen = []
class Parser:
    def parse_args(self, argv):
        def func(args):
            seen.append(("command", gc.isenabled(), gc.get_freeze_count() > 10000))
            return 0
        return argparse.Namespace(verbose=0, func=func)
def build_parser(argv):
    seen.append(("imports", gc.isenabled()))
    return Parser()
cli.build_parser = build_parser
fastrun.run_fast = lambda argv, environ: None
sys.argv = ["hypervm", "x"]
if sys.argv[1:] and "{entry}" == "in-process":
    cli.main(["x"])
elif "{entry}" == "console script":
    fastrun.main()
else:
    cli.main()
print(seen, gc.isenabled())
"""


@pytest.mark.parametrize(("entry", "seen"), [
    ("console script", "[('imports', False), ('command', True, True)] True"),
    ("python -m executor.cli", "[('imports', False), ('command', True, True)] True"),
    ("in-process", "[('imports', True), ('command', True, False)] True"),
])
def test_the_clis_start_up_runs_without_the_cyclic_gc_then_freezes_it(entry: str,
                                                                       seen: str) -> None:
    """The command's imports run with the GC off (its ~33 collections: ~5 ms before a cold
    run's createXML), what they made is frozen, and the command runs with the GC on; a caller
    of ``main(argv)`` in its own process keeps its GC as it is."""
    out = subprocess.run([sys.executable, "-c", GC_PROBE.replace("{entry}", entry)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    assert out.strip() == seen
