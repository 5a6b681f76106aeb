"""Modules a cold run's CLI leaves for after its createXML (executor.libvirt.starter's
``defer_modules``): an ``import`` elsewhere loads nothing, the first use of an attribute loads
the module once, threads racing that first use all get the loaded module, and a cold run's
``Starter.create`` leaves them for their first use (a ``run … true`` has none)."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.libvirt import starter

NAME = "hypervm_unit_later"
#: a later module's line that counts its runs
COUNT = "sys.hypervm_unit_later_runs = getattr(sys, 'hypervm_unit_later_runs', 0) + 1"


@pytest.fixture
def later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module ``hypervm_unit_later`` on the path (its source written by the test)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, NAME, raising=False)
    yield tmp_path / f"{NAME}.py"
    sys.modules.pop(NAME, None)
    for attr in ("hypervm_unit_later_runs", "hypervm_unit_later_partial"):
        if hasattr(sys, attr):
            delattr(sys, attr)


def test_an_import_elsewhere_loads_nothing_the_first_use_loads_it_once(later: Path) -> None:
    later.write_text("import sys\n"
                     f"{COUNT}\n"
                     "VALUE = 7\n")
    starter.defer_modules([NAME])
    namespace: dict[str, object] = {}
    exec(f"import {NAME} as module", namespace)  # what `import inspect` in dataclasses does
    module = importlib.import_module(NAME)
    assert module is namespace["module"] is sys.modules[NAME]
    assert not hasattr(sys, "hypervm_unit_later_runs")  # importlib.util.LazyLoader's would run
    assert module.VALUE == 7
    assert type(module) is types.ModuleType
    assert module.VALUE == 7 and sys.hypervm_unit_later_runs == 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        module.MISSING  # noqa: B018


def test_threads_racing_the_first_use_all_get_the_loaded_module(later: Path) -> None:
    """A thread that asks while another loads it waits for the load: it never sees a module
    without the attribute (LazyLoader in 3.11 has no lock)."""
    later.write_text("import sys, time\n"
                     f"{COUNT}\n"
                     "FIRST = 1\ntime.sleep(0.2)\nLAST = 2\n")
    starter.defer_modules([NAME])
    module = sys.modules[NAME]
    got: list[object] = []
    go = threading.Barrier(8)

    def use() -> None:
        go.wait()
        try:
            got.append(module.LAST)
        except AttributeError as e:
            got.append(e)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert got == [2] * 8
    assert sys.hypervm_unit_later_runs == 1  # type: ignore[attr-defined]


def test_its_own_code_sees_a_partially_initialized_module(later: Path) -> None:
    later.write_text("import sys\nme = sys.modules[__name__]\n"
                     "sys.hypervm_unit_later_partial = not hasattr(me, 'LATER')\nLATER = 1\n")
    starter.defer_modules([NAME])
    assert sys.modules[NAME].LATER == 1
    assert sys.hypervm_unit_later_partial is True  # type: ignore[attr-defined]


def test_a_loaded_or_missing_module_is_left_alone(later: Path) -> None:
    starter.defer_modules(["os", "hypervm_unit_no_such_module"])
    assert sys.modules["os"] is os and "hypervm_unit_no_such_module" not in sys.modules


def test_the_cold_runs_create_leaves_them_for_their_first_use(
        later: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Starter.create`` loads none of them (a cold ``run … true`` never uses them: their
    load was ~8-9 ms of CPU in the guest's boot window); the first use still does."""
    later.write_text("import sys\n"
                     f"{COUNT}\n"
                     "VALUE = 7\n")
    starter.defer_modules([NAME])
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    os.write(from_w, starter.encode({"uuid": "u-1"}))
    held = starter.Starter(os.getpid(), to_w, from_r, "test:///default")
    monkeypatch.setattr(held, "_reap", lambda: None)  # the 'child' is this process
    try:
        assert held.create("test:///default", "hypervm-unit-l", "<domain/>", timeout=5) == \
            ("ok", "u-1", False)
        assert not hasattr(sys, "hypervm_unit_later_runs")
        assert type(sys.modules[NAME]) is not types.ModuleType
        assert sys.modules[NAME].VALUE == 7
        assert sys.hypervm_unit_later_runs == 1  # type: ignore[attr-defined]
    finally:
        held.close()
        for fd in (to_r, from_w):
            os.close(fd)
