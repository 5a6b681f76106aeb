"""What a pool VM (and a standby clone, executor.snapshot.keeper) runs before anyone claims it:
its NIC configured, its layers and the host's warm-up layer hot-added, one throwaway container
(under TCG its code is then translated for the claimer's START), for an image VM the pod's
container prepared up to its START, and then its guest RAM's pages of zeros given back as a
cold VM's are (HyperQEMU's ``discard-zero-pages``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from executor import network
from executor.guest.channel import RawChannel
from executor.guest.protocol import (
    POOL_REQUEST_ID,
    WARMUP_HANDLE,
    WARMUP_SERIAL,
    MsgType,
    layer_serial,
    prepare_request,
    warmup_start,
)
from executor.libvirt.domain import DiskSpec
from executor.libvirt.domain_xml import hotplug_disk_xml
from executor.pool.protocol import FIRST_POD_UNIT, WARMUP_UNIT
from executor.reclaim import discard_zero_pages, flush_boot_translations
from hypervm import netspec
from hypervm.errors import BootError, GuestError

log = logging.getLogger(__name__)


def attach_layers(hv: Any, name: str, layers: Sequence[str | Path], warmup_layer: Path) -> None:
    """Hot-add an image VM's ``layers`` (at the pod's units) and the warm-up layer."""
    disks = [(Path(path), layer_serial(i), FIRST_POD_UNIT + i) for i, path in
             enumerate(layers)] + [(warmup_layer, WARMUP_SERIAL, WARMUP_UNIT)]
    for path, serial, unit in disks:
        hv.attach_device(name, hotplug_disk_xml(DiskSpec(path=path, serial=serial), unit))


def run_warmup(channel: RawChannel, name: str, layers: int, timeout: float) -> None:
    """One throwaway container from the warm-up layer; BootError unless it exits 0."""
    channel.request(MsgType.START, POOL_REQUEST_ID + 1, warmup_start(layers), timeout)
    status = channel.await_exit(WARMUP_HANDLE, timeout)
    if status.code != 0:
        raise BootError(f"the warm-up container of {name} ended with {status.describe()}")


def prepare_guest(hv: Any, name: str, channel: RawChannel, layers: Sequence[str],
                  warmup_layer: Path, *, flush_tcg: bool, timeout: float,
                  discard_zeros: bool = False) -> dict[str, Any]:
    """After the boot, what every claimer would otherwise wait for; the READY payload.
    ``discard_zeros`` (a pool VM's memfd RAM, never a clone's private mapping of its template):
    at the end, once the warm-up has exited, the guest RAM pages holding only zeros go back
    to the host, as with a cold VM's settled flush (its boot's zero-filled tables, its bss).
    Its translations stay: the claimer's START runs the warm-up's code."""
    ready = channel.ready(timeout)
    nic = network.guest_config(netspec.NetworkSpec(), network.mac_address(name), [])
    channel.request(MsgType.NETWORK, POOL_REQUEST_ID, nic or {}, timeout)
    if flush_tcg:  # before the warm-up, whose translations the claimer's START uses
        flush_boot_translations(hv, name)
    attach_layers(hv, name, layers, warmup_layer)
    # an image VM's warm-up goes through a prepared container too, and the pod's container is
    # prepared after it
    prepare = bool(layers) and _prepare_container(
        name, channel, prepare_request(len(layers), warmup=True), timeout)
    run_warmup(channel, name, len(layers), timeout)
    if prepare:
        _prepare_container(name, channel, prepare_request(len(layers)), timeout)
    if discard_zeros:
        discard_zero_pages(hv, name)
    return ready


def _prepare_container(name: str, channel: RawChannel, request: dict[str, Any],
                       timeout: float) -> bool:
    try:
        channel.request(MsgType.PREPARE, POOL_REQUEST_ID + 2, request, timeout)
    except GuestError as e:  # the START then does all the work itself
        log.warning("pool VM %s: no prepared container (%s)", name, e)
        return False
    return True
