"""``hypervm doctor``: whether libvirt keeps its QEMU capabilities between domain starts.

libvirt 9.0 probes each QEMU binary once (~1 s: a QEMU started with ``-machine none`` and
~100 QMP queries) and caches what it learnt, valid while nothing it depends on changes. One of
those things is whether /dev/kvm is usable by the user it runs QEMU as (``virQEMUCapsIsValid``,
"KVM was enabled when probing …, but it is not available now"). But the probe itself runs with
CAP_DAC_OVERRIDE: where /dev/kvm is root's alone (mode 0600, root:root: the kernel's own
default, on a host without udev, like a container or a microVM), the probe sees KVM and the
QEMU user does not, so **every** capability lookup is outdated and re-probes: every createXML
(and every virConnectGetCapabilities) pays a probe of its emulator, the probes of all callers
run one after the other under the cache's lock, and on a host where 4 users start VMs a
createXML took 35-65 s (2026-12-04, bench.createfast; 0.1-0.2 s with /dev/kvm root:kvm 0660).

The fix is the device's usual mode: Debian's udev (``50-udev-default.rules``) makes /dev/kvm
root:kvm 0660, and libvirt's QEMU user (libvirt-qemu) is in group kvm. ``make services`` does it
on a host where /dev/kvm is 0600 root:root. Each VM's QEMU runs as a uid of its own
(executor.libvirt.identity), in no group kvm: it gains nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from executor.cli.check import Check
from executor.libvirt.hypervisor import Hypervisor
from hypervm import fsmode
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError

KVM_DEVICE = Path("/dev/kvm")
FIX = "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (Debian's udev rule; make services does it)"


def read_write(st: os.stat_result, uid: int, groups: set[int]) -> bool:
    """Whether ``uid`` (in ``groups``) may read and write a file of this mode and owner by
    its permission bits alone (no capability), as libvirt checks it for its QEMU user."""
    return fsmode.allows(st, uid, groups, fsmode.READ | fsmode.WRITE)


def check_kvm_device(cfg: HostConfig, device: Path = KVM_DEVICE) -> Check:
    try:
        st = device.stat()
    except FileNotFoundError:
        return Check("libvirt caps", True, f"no {device}: libvirt keeps its QEMU capabilities")
    except OSError as e:
        return Check("libvirt caps", True, f"cannot stat {device}: {e}", warn=True)
    try:
        with Hypervisor(cfg.libvirt_uri, events=False) as hv:
            user = hv.qemu_user()
    except HyperVMError as e:
        return Check("libvirt caps", True, f"cannot ask libvirt for its QEMU user: {e}",
                     warn=True)
    if user is None or read_write(st, user[0], fsmode.process_groups(*user)):
        return Check("libvirt caps", True, f"{device} is usable by libvirt's QEMU user as by "
                     "its probes: libvirt keeps its QEMU capabilities")
    return Check("libvirt caps", True, f"{device} ({stat.filemode(st.st_mode)}, gid "
                 f"{st.st_gid}) is not usable by libvirt's QEMU user (uid {user[0]}), but is by "
                 "its capability probes: libvirt re-probes every QEMU (~1 s each, one at a "
                 "time) at every domain start", FIX, warn=True)
