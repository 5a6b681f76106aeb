"""Making a snapshot: boot a template VM of one memory size with 2 vCPUs present of its capacity
(store.template_shape; designer.present_vcpus), only the first online (one of a capacity above
``HYPERVM_SNAPSHOT_VCPUS``: all present and online, designer.online_vcpus), bring its init to
READY with its NIC configured, check that its init can be reseeded and onlines vCPUs up to what
it is asked for and no more (RESEED with ``cpus``: 1 leaves the spare offline), save its state
into the store, and destroy it. Nothing of a pod ever runs in a template, and none of its shares
is mounted (QEMU refuses to migrate a VM whose 9p export the guest has mounted).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from executor import netpolicy, network
from executor.guest.channel import RawChannel, connect_socket
from executor.guest.protocol import RESEED_BYTES, MsgType, reseed_payload
from executor.libvirt import migration
from executor.libvirt.designer import POOL_SHARE_DIR, online_vcpus, template_domain
from executor.libvirt.domain import DOMAIN_PREFIX
from executor.snapshot import store
from executor.snapshot.store import Shape, Snapshot
from hypervm import netspec
from hypervm.config import HostConfig
from hypervm.errors import GuestError, HostError, HyperVMError
from vmimage.boot import BootFiles

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 60.0
SAVE_TIMEOUT = 120.0
#: wait this long before the save: the guest's free page reporting (init sets it up) hands
#: memory freed at boot back ~2 s after it was freed, so its pages are saved as zero pages.
#: Measured (128 MiB): state 17.0 MB saved at once, 17.0 after 1 s, 14.0 after 2 s or 4 s;
#: each clone then has ~3 MiB less private memory after its load. Paid once per shape
SETTLE_S = 2.0
#: request ids on the template's channel (nobody else talks to it)
_NETWORK_ID, _RESEED_ID = 1, 2


def ensure(cfg: HostConfig, boot: BootFiles, hv: Any, shape: Shape,
           wait: float | None = None, count: bool = True) -> Snapshot:
    """The snapshot a pod of ``shape`` is cloned from (its tenant's, its memory size's, of
    its vCPUs or more: store.template_shape), counted as one more clone (``count``; a standby
    keeper's is counted when a launch takes it): from the store, else (none, or one due for
    rotation) made now (once per host: a concurrent launch of the same shape waits for this
    one's). HostError when another template is being made for longer than ``wait`` seconds
    (None: no bound)."""
    counted = store.count_clone if count else (lambda _snap: None)
    key = store.snapshot_key(boot, cfg, shape)
    found = store.lookup(cfg, key)
    if found is not None:
        counted(found)
        return found
    with store.locked(cfg, timeout=wait):
        found = store.lookup(cfg, key)
        if found is not None:
            counted(found)
            return found
        store.check_not_failed(cfg, key)  # every launch of the shape would wait for it again
        started = time.monotonic()
        try:
            with store.writing(cfg, key) as (fd, tmp):
                name, ready, memory = _boot_and_save(cfg, boot, hv, shape, fd, tmp)
                store.write_meta(tmp, name, ready, memory=memory)
        except HyperVMError as e:
            store.record_failure(cfg, key, str(e))
            raise
        log.info("snapshot %s of a template of up to %d vCPUs / %d MiB made in %.2f s", key,
                 store.template_shape(cfg, shape).vcpus, shape.memory_mib,
                 time.monotonic() - started)
    made = store.lookup(cfg, key)
    if made is None:
        raise HostError(f"the snapshot {key} just made cannot be read back")
    counted(made)
    return made


def _boot_and_save(cfg: HostConfig, boot: BootFiles, hv: Any, shape: Shape,
                   fd: int, entry: Path) -> tuple[str, dict[str, Any], bool]:
    """Boot the template, save it into ``fd`` (the stream) and, when its QEMU can, its RAM
    into ``entry``'s memory file; its name, its READY payload and whether it saved its RAM
    apart."""
    name = f"{DOMAIN_PREFIX}template-{uuid.uuid4().hex[:8]}"
    run_dir = cfg.vms_dir / name
    # QEMU as libvirt's user: the template is ours, never a tenant's
    capacity = store.template_shape(cfg, shape).vcpus
    spec = template_domain(name, boot, cfg, run_dir, capacity, shape.memory_mib,
                           {"snapshot": "template"})
    # its RAM in a file of its own, which the clones map: needs HyperQEMU's ram-template and
    # the template's RAM in a shared memfd (x-ignore-shared leaves only that out of the stream)
    apart = boot.qemu.shares_template_memory and not (spec.memory_merge
                                                      or spec.anonymous_memory)
    sock = None
    memory_fd = None
    try:
        netpolicy.enforce(cfg, network.host_resolv_conf())
        hv.prepare_run_dir(run_dir)
        (run_dir / POOL_SHARE_DIR).mkdir(mode=0o755)
        hv.create(spec)
        sock = connect_socket(spec.channel_socket, BOOT_TIMEOUT)
        channel = RawChannel(sock)
        ready = channel.ready(BOOT_TIMEOUT)
        nic = network.guest_config(netspec.NetworkSpec(), network.mac_address(name), [])
        channel.request(MsgType.NETWORK, _NETWORK_ID, nic or {}, BOOT_TIMEOUT)
        _check_reseed(channel, ready, online_vcpus(capacity, cfg.snapshot_vcpus))
        time.sleep(SETTLE_S)
        memory_fd = store.open_memory(entry) if apart else None
        migration.save(hv, name, fd, SAVE_TIMEOUT, memory_fd=memory_fd)
        return name, ready, apart
    except OSError as e:
        raise HostError(f"cannot make the template {name}: {e}") from e
    finally:
        if memory_fd is not None:
            os.close(memory_fd)
        if sock is not None:
            sock.close()
        try:
            hv.destroy(name)
        except HyperVMError as e:
            log.warning("cannot destroy the template %s: %s", name, e)
        shutil.rmtree(run_dir, ignore_errors=True)


def _check_reseed(channel: RawChannel, ready: dict[str, Any], online: int) -> None:
    """Clones are reseeded and get their further vCPUs online with RESEED: an init that
    cannot do both (one older than 0.6.0 ignores ``cpus`` and replies ``{}``) has no clones.
    ``online``: the vCPUs the template keeps online (designer.online_vcpus), asked for."""
    try:
        reply = channel.request(MsgType.RESEED, _RESEED_ID,
                                reseed_payload(os.urandom(RESEED_BYTES), cpus=online),
                                BOOT_TIMEOUT)
    except GuestError as e:
        raise HostError(f"the guest init {ready.get('init')} cannot reseed its RNG ({e}): "
                        "no snapshot of it", hint="rebuild the init (make -C init)") from e
    if "cpus" not in reply:
        raise HostError(f"the guest init {ready.get('init')} cannot online hot-plugged vCPUs: "
                        "no snapshot of it", hint="rebuild the init (make -C init)")
    if reply["cpus"] != online:  # an init older than 0.7.0 onlines every present CPU
        raise HostError(f"the guest init {ready.get('init')} onlined {reply['cpus']!r:.20} "
                        f"vCPUs when asked for {online}: no snapshot of it",
                        hint="rebuild the init (make -C init)")
