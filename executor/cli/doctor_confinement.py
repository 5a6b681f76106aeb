"""``hypervm doctor``: the confinement in force around each VM's QEMU (issue 15).

- VM identity: every VM's QEMU runs as a uid of its own (executor.libvirt.identity), or all share
  libvirt's QEMU user (no DAC, not root): which, the range, how many are in use;
- seccomp: libvirt's ``seccomp_sandbox`` (qemu.conf) and, when a VM runs, what the kernel
  says of its QEMU (``Seccomp:`` in /proc/<pid>/status: 2 is a filter in force);
- QEMU user: qemu.conf's ``user``/``group`` and the uid of running QEMUs: root would escape
  the per-VM identities and the network policy (its rules match the VMs' QEMU uids);
- network: the guests' network policy (executor.netpolicy): what a guest reaches, whether
  nftables can enforce it, and whether its table is in force now (a failure when VMs run
  without it: a firewall reload flushed it).

Checks return :class:`executor.cli.check.Check`; ``warn`` marks what works but is weaker
than it should be (doctor still exits 0 for it).
"""

from __future__ import annotations

import grp
import pwd
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from executor import netpolicy
from executor.cli.check import Check
from executor.libvirt import identity
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.qemu_process import LIBVIRT_PID_DIR
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
_SECCOMP_RE = re.compile(r"^\s*seccomp_sandbox\s*=\s*(-?\d+)\s*$", re.MULTILINE)
_USER_RE = re.compile(r'^\s*(user|group)\s*=\s*"([^"]*)"', re.MULTILINE)
#: /proc/<pid>/status Seccomp: 0 none, 1 strict, 2 filter
_SECCOMP_MODES = {"0": "none", "1": "strict", "2": "filter"}


def _check(*args: Any, **kwargs: Any) -> Any:
    return Check(*args, **kwargs)


def host_users_in(first: int, last: int) -> list[str]:
    """Users of the host whose uid lies in the VM range (they would share a VM's files)."""
    return sorted(p.pw_name for p in pwd.getpwall() if first <= p.pw_uid <= last)


def namespaces_off(text: str) -> bool:
    """qemu.conf runs QEMU in the host's mount namespace (``namespaces = []``): libvirt then
    labels host device nodes a VM uses (its RNG's /dev/urandom) for that VM's user instead of
    nodes in QEMU's private /dev (not tried here), and the warm pool cannot bind mounts."""
    return re.search(r"^\s*namespaces\s*=\s*\[\s*\]", text, re.MULTILINE) is not None


def check_vm_identity(cfg: HostConfig, conf: Path = QEMU_CONF) -> Any:
    first, last = cfg.vm_uid_range
    try:
        with Hypervisor(cfg.libvirt_uri, events=False) as hv:
            confined = hv.confines_per_vm()
    except HyperVMError as e:
        return _check("VM identity", False, f"cannot ask libvirt: {e}")
    if not confined:
        return _check("VM identity", True, "every VM's QEMU runs as the same user (libvirt "
                      "has no DAC model or we are not root): one QEMU escape reaches every "
                      "VM's files", warn=True)
    try:
        if namespaces_off(conf.read_text()):
            return _check("VM identity", False, f"{conf} sets namespaces = []: with a uid per "
                          "VM, libvirt labels host device nodes (/dev/urandom) per VM",
                          fix=f'remove namespaces = [] from {conf} (default: ["mount"])')
    except OSError:
        pass
    clash = host_users_in(first, last)
    if clash:
        return _check("VM identity", False, f"host users {', '.join(clash[:5])} have uids in "
                      f"the VM range {first}-{last}",
                      fix="set HYPERVM_VM_UID_RANGE to a range no host user has")
    libvirt_dir = identity.LIBVIRT_QEMU_DIR
    note = ""
    if libvirt_dir.exists() and not libvirt_dir.stat().st_mode & 0o001:
        note = f"; {libvirt_dir} gets o+x at the first boot"
    used = sum(map(identity.qemu_runs, identity.in_use().values()))
    return _check("VM identity", True, f"each VM's QEMU runs as its own uid:gid from "
                  f"{first}-{last} ({last - first + 1} uids, {used} in use){note}")


def seccomp_setting(text: str) -> int | None:
    """qemu.conf's ``seccomp_sandbox`` (the last uncommented one), None when unset."""
    found = _SECCOMP_RE.findall(text)
    return int(found[-1]) if found else None


def _qemu_status(pid_dir: Path, field: str) -> dict[str, str]:
    """domain -> the first number of ``field`` in its running QEMU's /proc status, for our
    domains (hypervm-*) whose QEMU still runs."""
    found = {}
    for pid_file in sorted(pid_dir.glob("hypervm-*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ValueError):
            continue
        match = re.search(rf"^{field}:\s*(\d+)", status, re.MULTILINE)
        if match:
            found[pid_file.stem] = match.group(1)
    return found


def qemu_seccomp_modes(pid_dir: Path = LIBVIRT_PID_DIR) -> dict[str, str]:
    """domain -> seccomp mode of its running QEMU, for our domains (hypervm-*)."""
    return {domain: _SECCOMP_MODES.get(mode, mode)
            for domain, mode in _qemu_status(pid_dir, "Seccomp").items()}


def check_seccomp(_: HostConfig, conf: Path = QEMU_CONF,
                  pid_dir: Path = LIBVIRT_PID_DIR) -> Any:
    try:
        setting = seccomp_setting(conf.read_text())
    except OSError:
        setting = None
    if setting == 0:
        return _check("QEMU seccomp", False, f"seccomp_sandbox = 0 in {conf}: QEMU runs "
                      "without a syscall filter", fix=f"remove seccomp_sandbox = 0 from {conf}")
    modes = qemu_seccomp_modes(pid_dir)
    configured = (f"seccomp_sandbox = {setting}" if setting is not None
                  else "seccomp_sandbox unset (libvirt: on where QEMU supports it)")
    if not modes:
        return _check("QEMU seccomp", True, f"{configured}; no VM runs to confirm it")
    unfiltered = sorted(name for name, mode in modes.items() if mode != "filter")
    if unfiltered:
        return _check("QEMU seccomp", False, f"{configured}, but the QEMU of "
                      f"{', '.join(unfiltered[:3])} has no seccomp filter",
                      fix="use a QEMU built with libseccomp (make qemu)")
    return _check("QEMU seccomp", True, f"{configured}; filter in force in the QEMU of "
                  f"{len(modes)} running VM(s)")


def qemu_conf_identity(text: str) -> dict[str, str]:
    """qemu.conf's ``user`` and ``group`` (the last uncommented ones; absent when unset)."""
    return {key: value for key, value in _USER_RE.findall(text)}


def resolve_id(value: str, by_name: Callable[[str], int]) -> int | None:
    """A qemu.conf user/group value as libvirt reads it: ``+N`` is the id N, else a name,
    else a number; None when it is neither."""
    if value.startswith("+") and value[1:].isdigit():
        return int(value[1:])
    try:
        return by_name(value)
    except KeyError:
        return int(value) if value.isdigit() else None


def root_in_qemu_conf(text: str, user_id: Callable[[str], int] = lambda n: pwd.getpwnam(n).pw_uid,
                      group_id: Callable[[str], int] = lambda n: grp.getgrnam(n).gr_gid,
                      ) -> list[str]:
    """The settings of ``text`` (qemu.conf) that make QEMU run as root: ``user = "root"``,
    ``group = "+0"``, ..."""
    found = qemu_conf_identity(text)
    lookups = {"user": user_id, "group": group_id}
    return [f'{key} = "{value}"' for key, value in found.items()
            if resolve_id(value, lookups[key]) == 0]


def qemu_uids_running(pid_dir: Path = LIBVIRT_PID_DIR) -> dict[str, int]:
    """domain -> real uid of its running QEMU, for our domains (hypervm-*)."""
    return {domain: int(uid) for domain, uid in _qemu_status(pid_dir, "Uid").items()}


def check_qemu_user(_: HostConfig, conf: Path = QEMU_CONF, pid_dir: Path = LIBVIRT_PID_DIR) -> Any:
    """QEMU must never run as root: the per-VM identities and the network policy (nftables
    rules on the VMs' QEMU uids) would not apply to it."""
    try:
        as_root = root_in_qemu_conf(conf.read_text())
    except OSError:
        as_root = []
    fix = (f"remove the user/group lines from {conf} (libvirt's default: libvirt-qemu) or "
           "name an unprivileged user, then restart libvirtd and the VMs")
    if as_root:
        return _check("QEMU user", False, f"{conf} sets {' and '.join(as_root)}: QEMU runs as "
                      "root, outside the per-VM identities and the network policy", fix=fix)
    running = qemu_uids_running(pid_dir)
    rooted = sorted(name for name, uid in running.items() if uid == 0)
    if rooted:
        return _check("QEMU user", False, f"the QEMU of {', '.join(rooted[:3])} runs as root: "
                      "outside the per-VM identities and the network policy", fix=fix)
    users = sorted(set(running.values()))
    seen = (f"; running QEMUs' uids: {', '.join(map(str, users[:5]))}" if users
            else "; no VM runs to confirm it")
    return _check("QEMU user", True, f"QEMU does not run as root ({conf}: "
                  f"{qemu_conf_identity_text(conf)}){seen}")


def qemu_conf_identity_text(conf: Path) -> str:
    try:
        found = qemu_conf_identity(conf.read_text())
    except OSError:
        found = {}
    return ", ".join(f'{k} = "{v}"' for k, v in found.items()) or "user/group unset"


def running_vms(pid_dir: Path = LIBVIRT_PID_DIR) -> list[str]:
    """Our domains whose QEMU runs (libvirt's pid file names a live process)."""
    names = []
    for pid_file in sorted(pid_dir.glob("hypervm-*.pid")):
        try:
            if Path(f"/proc/{int(pid_file.read_text().strip())}").exists():
                names.append(pid_file.stem)
        except (OSError, ValueError):
            continue
    return names


def check_network_policy(cfg: HostConfig, pid_dir: Path = LIBVIRT_PID_DIR) -> Any:
    policy = cfg.net_policy
    if not policy.enforce:
        return _check("VM network", True, "policy off (HYPERVM_NET_POLICY=off): a guest "
                      "reaches the host's loopback services (10.0.2.2), link-local addresses "
                      "and whatever the host reaches", warn=True)
    if shutil.which("nft") is None:
        return _check("VM network", False, "nftables is not installed: VMs with a network "
                      "do not boot (the policy cannot be enforced)",
                      fix="apt-get install nftables (or HYPERVM_NET_POLICY=off)")
    uids = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in netpolicy.qemu_uids(cfg))
    running = running_vms(pid_dir)
    if netpolicy.installed() is not None:
        state = "in force"
    elif running:
        return _check("VM network", False, f"{len(running)} VM(s) run but the "
                      f"policy's table inet {netpolicy.TABLE} is gone (a firewall reload "
                      "flushed the ruleset?): their guests reach the host",
                      fix="boot any VM (hypervm run --rm ... true) to reinstall it, and keep "
                          "table inet hypervm out of firewall reloads")
    else:
        state = "installed when the next VM boots"
    return _check("VM network", True, f"policy {state} (nftables table inet "
                  f"{netpolicy.TABLE}, QEMU uids {uids}): {netpolicy.describe(policy)}")


CONFINEMENT_CHECKS = (check_vm_identity, check_qemu_user, check_seccomp, check_network_policy)

