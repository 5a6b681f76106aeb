"""The starter child's libvirt calls over libvirt-python's C extension alone
(executor.libvirt.bare): the same results and error texts as the ``libvirt`` module's, on
libvirt's ``test:///default`` driver."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from executor.libvirt import bare

libvirt = pytest.importorskip("libvirt")

DOMAIN = ("<domain type='test'><name>hypervm-unit-bare</name><memory>1024</memory>"
          "<os><type>hvm</type></os></domain>")


def _both() -> list[object]:
    loaded = bare.load()
    assert isinstance(loaded, bare.Bare)
    return [loaded, libvirt]


def test_the_constant_is_libvirts() -> None:
    assert bare.VIR_DOMAIN_START_AUTODESTROY == libvirt.VIR_DOMAIN_START_AUTODESTROY


@pytest.mark.parametrize("uri", ["test:///default",
                                 "qemu+unix:///system?socket=/nonexistent/libvirt-sock"])
def test_open_and_create_give_libvirts_answers(uri: str) -> None:
    """A connection, the domain's creation and its UUID, destroy and close (test:///default:
    a fresh driver per connection); a refused flag and an unreachable daemon: the same
    exception text and message."""
    outcomes = []
    for api in _both():
        got: list[object] = []
        try:
            conn = api.open(uri)  # type: ignore[attr-defined]
        except api.libvirtError as e:  # type: ignore[attr-defined]
            outcomes.append(("open", str(e), e.get_error_message()))
            continue
        try:
            conn.createXML(DOMAIN, api.VIR_DOMAIN_START_AUTODESTROY)  # type: ignore[attr-defined]
        except api.libvirtError as e:  # type: ignore[attr-defined]
            got.append(("refused", str(e), e.get_error_message()))
        dom = conn.createXML(DOMAIN, 0)
        got += [len(dom.UUIDString()), dom.destroy()]
        with pytest.raises(api.libvirtError):  # type: ignore[attr-defined]
            dom.destroy()  # not running any more
        got.append(conn.close())
        outcomes.append(tuple(got))
    assert outcomes[0] == outcomes[1]


def test_the_error_handler_and_event_loop_register() -> None:
    api = bare.load()
    assert api.registerErrorHandler(lambda _ctx, _err: None, None) == 1
    assert api.virEventRegisterDefaultImpl() == 0


def test_an_extension_without_a_call_falls_back_to_libvirt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    partial = types.ModuleType("hypervm_unit_partialmod")
    partial.virConnectOpen = lambda uri: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hypervm_unit_partialmod", partial)
    assert bare.load("hypervm_unit_partialmod") is libvirt
    assert bare.load("hypervm_unit_no_such_module") is libvirt


def test_loading_it_imports_no_libvirt_module() -> None:
    """What the child gains: the C extension without libvirt.py and typing."""
    code = ("import sys; from executor.libvirt import bare; bare.load();"
            "print(sorted(m for m in ('libvirt', 'typing', 'libvirtmod') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["['libvirtmod']"]
