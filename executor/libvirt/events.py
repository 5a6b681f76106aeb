"""What the libvirt wrapper hands its callers: the facts of one of our domains, and lifecycle
events (pure values; libvirt's enums decoded by value, so nothing here imports libvirt)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hypervm.frozen import frozen_dataclass


@frozen_dataclass
class DomainInfo:
    """One of our domains as ``list_ours`` found it."""

    name: str
    uuid: str
    running: bool
    metadata: Mapping[str, str]
    disk_paths: tuple[Path, ...]
    share_paths: tuple[Path, ...]


#: libvirt's virDomainEventType, by value
EVENT_NAMES = (
    "defined",
    "undefined",
    "started",
    "suspended",
    "resumed",
    "stopped",
    "shutdown",
    "pmsuspended",
    "crashed",
)
#: virDomainEventStoppedDetailType, by value
STOPPED_DETAILS = ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                   "from_snapshot")
#: virConnectCloseReason, by value
CLOSE_REASONS = ("error", "eof", "keepalive", "client")
#: our own event: the connection to libvirtd was lost; its auto-destroyed VMs are gone or orphaned
DISCONNECTED = "disconnected"


@frozen_dataclass
class LifecycleEvent:
    """A lifecycle change of one of our domains (delivered on the libvirt event thread).

    After a guest power-off the stop reason is "shutdown", or "destroyed" when libvirt reaps QEMU
    before it handles QEMU's SHUTDOWN event (on_poweroff=destroy; seen under load): tell a clean
    power-off from a kill by what the caller itself asked for, not by the reason.
    """

    name: str
    event: str
    detail: int

    @property
    def stopped(self) -> bool:
        """The VM no longer runs (or, after DISCONNECTED, can no longer be controlled)."""
        return self.event in ("stopped", DISCONNECTED)

    @property
    def reason(self) -> str:
        if self.event == "stopped" and 0 <= self.detail < len(STOPPED_DETAILS):
            return STOPPED_DETAILS[self.detail]
        if self.event == DISCONNECTED and 0 <= self.detail < len(CLOSE_REASONS):
            return CLOSE_REASONS[self.detail]
        return str(self.detail)

    @property
    def crashed(self) -> bool:
        return self.event == "crashed" or (self.stopped and self.reason in ("crashed", "failed"))
