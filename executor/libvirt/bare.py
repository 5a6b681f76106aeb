"""The starter child's few libvirt calls through libvirt-python's C extension alone.

``import libvirt`` is libvirt-python's C extension (``libvirtmod``: loading libvirt's ~170
shared objects, ~11 ms) and then its generated Python module (9000 lines of wrapper classes,
with ``typing``: ~6 ms). The starter child (executor.libvirt.starter) makes five calls before
it answers the run — register an error handler and the event loop, open a connection, create
a domain, read its UUID — and may destroy the domain later. Each wrapper of ``libvirt.py`` is
one call of the same ``libvirtmod`` function with the wrapped object's ``_o`` and a
``libvirtError`` when it returns its failure value; :func:`load` makes those calls on
``libvirtmod`` directly and raises :class:`libvirtError` with the same text (libvirt's last
error of this thread, else the name of the failed call), so the child's whole path to its
request skips the Python module. Any of the functions missing (another build of the bindings,
``cygvirtmod``): :func:`load` returns the ``libvirt`` module itself, whose names these are.

The child holds its connection and domain until it exits (``os._exit``): nothing here frees
them (``libvirt.py``'s ``__del__`` would, at an interpreter's teardown the child never runs).
"""

from __future__ import annotations

import importlib

#: typing.TYPE_CHECKING without importing typing (which importing libvirt.py costs, ~2.3 ms)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: libvirt.VIR_DOMAIN_START_AUTODESTROY (a unit test keeps them equal)
VIR_DOMAIN_START_AUTODESTROY = 2
#: the C extension's functions the calls below use
CALLS = ("virRegisterErrorHandler", "virEventRegisterDefaultImpl", "virEventRunDefaultImpl",
         "virConnectOpen", "virConnectClose", "virDomainCreateXML", "virDomainGetUUIDString",
         "virDomainDestroy", "virGetLastError")


class libvirtError(Exception):  # noqa: N801 - libvirt's name: the child catches either
    """A failed call: libvirt's last error of this thread (as libvirt.libvirtError)."""

    def __init__(self, mod: Any, failed: str) -> None:
        self.err = mod.virGetLastError()
        super().__init__(self.err[2] if self.err is not None else failed)

    def get_error_message(self) -> str | None:
        return self.err[2] if self.err is not None else None


class Domain:
    """libvirt.virDomain's two calls the child makes."""

    def __init__(self, mod: Any, handle: object) -> None:
        self._mod, self._o = mod, handle

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        uuid = self._mod.virDomainGetUUIDString(self._o)
        if uuid is None:
            raise libvirtError(self._mod, "virDomainGetUUIDString() failed")
        return str(uuid)

    def destroy(self) -> int:
        result = int(self._mod.virDomainDestroy(self._o))
        if result == -1:
            raise libvirtError(self._mod, "virDomainDestroy() failed")
        return result


class Connection:
    """libvirt.virConnect's two calls the child makes."""

    def __init__(self, mod: Any, handle: object) -> None:
        self._mod, self._o = mod, handle

    def createXML(self, xml: str, flags: int = 0) -> Domain:  # noqa: N802 - libvirt's name
        handle = self._mod.virDomainCreateXML(self._o, xml, flags)
        if handle is None:
            raise libvirtError(self._mod, "virDomainCreateXML() failed")
        return Domain(self._mod, handle)

    def close(self) -> int:
        result = int(self._mod.virConnectClose(self._o))
        if result == -1:
            raise libvirtError(self._mod, "virConnectClose() failed")
        return result


class Bare:
    """The subset of the ``libvirt`` module the starter child uses, over ``libvirtmod``."""

    VIR_DOMAIN_START_AUTODESTROY = VIR_DOMAIN_START_AUTODESTROY
    libvirtError = libvirtError

    def __init__(self, mod: Any) -> None:
        self._mod = mod

    def registerErrorHandler(self, f: Any, ctx: Any) -> int:  # noqa: N802 - libvirt's name
        return int(self._mod.virRegisterErrorHandler(f, ctx))

    def virEventRegisterDefaultImpl(self) -> int:  # noqa: N802 - libvirt's name
        return self._checked("virEventRegisterDefaultImpl")

    def virEventRunDefaultImpl(self) -> int:  # noqa: N802 - libvirt's name
        return self._checked("virEventRunDefaultImpl")

    def _checked(self, name: str) -> int:
        result = int(getattr(self._mod, name)())
        if result == -1:
            raise libvirtError(self._mod, f"{name}() failed")
        return result

    def open(self, uri: str | None = None) -> Connection:
        handle = self._mod.virConnectOpen(uri)
        if handle is None:
            raise libvirtError(self._mod, "virConnectOpen() failed")
        return Connection(self._mod, handle)


def load(module: str = "libvirtmod") -> Any:
    """:class:`Bare` over libvirt-python's C extension ``module``, or the ``libvirt`` module
    when that extension lacks one of :data:`CALLS` or cannot be imported."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        mod = None
    if mod is None or not all(callable(getattr(mod, name, None)) for name in CALLS):
        return importlib.import_module("libvirt")
    return Bare(mod)
