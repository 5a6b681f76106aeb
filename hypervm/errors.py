"""The one exception root of hypervm and its typed subclasses.

Every error a user can cause or meet is one of these; the CLI and the executor turn them into one
clear line (CLI) or a TaskStatus message (executor). Errors from libraries are converted at the
boundary with ``raise … from e``.
"""

from __future__ import annotations


class HyperVMError(Exception):
    """Root of every hypervm error. ``str(err)`` is a complete, user-facing sentence."""

    #: a short hint telling the user how to fix the problem, or None
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class InvalidSpec(HyperVMError):
    """User input (CLI flags, TaskInfo, pod spec) is wrong; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str, *, hint: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}", hint=hint)


class HostError(HyperVMError):
    """The host cannot run HyperVMs (libvirtd down, no kernel, no permissions …)."""


class HypervisorError(HyperVMError):
    """libvirt or QEMU failed to create, control or destroy a VM."""


class BootError(HyperVMError):
    """The VM did not come up: no READY from the guest init in time, or a protocol mismatch."""


class ProtocolError(HyperVMError):
    """The host↔guest channel carried something that breaks init/PROTOCOL.md."""


class GuestError(HyperVMError):
    """The guest init answered a request with ERROR; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str, *, errno: int | None = None) -> None:
        self.code = code
        self.errno = errno
        super().__init__(f"{message} [{code}]")


class ImageError(HyperVMError):
    """An image cannot be resolved, fetched, verified or unpacked; names the image and blob."""

    def __init__(self, image: str, message: str, *, blob: str | None = None,
                 hint: str | None = None) -> None:
        self.image = image
        self.blob = blob
        where = f"{image} (blob {blob})" if blob else image
        super().__init__(f"{where}: {message}", hint=hint)


class NetworkError(HyperVMError):
    """A VM network or port mapping cannot be set up (e.g. the host port is taken)."""


class PoolError(HyperVMError):
    """The warm pool cannot serve a claim (none ready, not running, protocol broken); callers
    boot the VM cold instead."""
