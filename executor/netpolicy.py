"""The guests' network policy (issue 15 finding 4), enforced on the host with nftables.

A guest's traffic leaves the host as sockets of its VM's QEMU (slirp, ``executor.network``),
and every VM's QEMU runs as a uid of its own from ``HYPERVM_VM_UID_RANGE``
(``executor.libvirt.identity``). So one nftables table, ``inet hypervm``, filters the
connections those uids open (hook ``output``): once a connection is established its packets
pass (published ports are connections others open to QEMU, so they are untouched); a new one
to an allowed host service (HYPERVM_NET_ALLOW_HOST) or to the host's resolvers on port 53
(slirp's DNS at 10.0.2.3 forwards to them) passes; a new one to the host itself (loopback and
any address of the host: where 10.0.2.2 leads), to a link-local, multicast or broadcast
address, or to a range of HYPERVM_NET_DENY is refused at once (TCP reset, ICMP unreachable).
Everything else - the outside world - passes.

Host-wide: the table is the host's, rebuilt atomically (``nft -f``, ~17 ms) before every VM
with a NIC boots, from that process's settings (every process of a host must share them, as
they share the uid range) - unless it is exactly what the last install of the same script left
(``RECORD``, root-only in the run dir: that listing compared with ``nft list``, ~5 ms; a
difference, no record or any error installs again). Packets without a socket, and every
other user's, never enter the table's filter. Without nftables the boot fails closed unless
the operator turned the policy off (HYPERVM_NET_POLICY=off).

:func:`ruleset` is pure; :func:`enforce` and :func:`installed` are the side effects.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from hypervm.config import HostConfig, NetPolicy
from hypervm.errors import NetworkError
from hypervm.jsonfile import replace_json

log = logging.getLogger(__name__)

TABLE = "hypervm"
#: the users QEMU runs as when libvirt cannot give each VM a uid of its own
SHARED_QEMU_USERS = ("libvirt-qemu", "qemu")
#: never reachable from a guest, whatever the settings (besides every address of the host)
ALWAYS_DENIED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "fe80::/10", "ff00::/8"))
_NFT_TIMEOUT_S = 10.0
#: in the run dir: the script last installed and the table's listing right after (root-only)
RECORD = "netpolicy.json"


def _addresses(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
               version: int) -> str:
    return ", ".join(str(n) for n in networks if n.version == version)


def ruleset(policy: NetPolicy, uids: Sequence[tuple[int, int]],
            resolvers: Sequence[str] = ()) -> str:
    """The nft script that replaces table ``inet hypervm`` with ``policy`` for sockets owned by
    ``uids`` (first, last ranges); ``resolvers``: the host's nameservers (allowed on port 53).
    """
    owners = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in uids)
    allow = []
    for service in policy.allow_host:
        family = "ip" if service.address.version == 4 else "ip6"
        allow.append(f"{family} daddr {service.address} {service.protocol} dport "
                     f"{service.port} accept")
    for text in dict.fromkeys(resolvers):
        address = ipaddress.ip_address(text)
        family = "ip" if address.version == 4 else "ip6"
        allow.append(f"{family} daddr {address} meta l4proto {{ tcp, udp }} th dport 53 accept")
    deny = [*ALWAYS_DENIED, *policy.deny]
    lines = [
        f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    meta skuid {{ {owners} }} jump guest",
        "  }",
        "  chain guest {",
        "    ct state established,related accept",
        *(f"    {rule}" for rule in allow),
        "    fib daddr type { local, broadcast, anycast, multicast } jump refuse",
        f"    ip daddr {{ {_addresses(deny, 4)} }} jump refuse",
        f"    ip6 daddr {{ {_addresses(deny, 6)} }} jump refuse",
        "  }",
        "  chain refuse {",
        "    meta l4proto tcp reject with tcp reset",
        "    reject",
        "  }",
        "}",
    ]
    # an operator's list may lack one family: no empty set
    return "\n".join(line for line in lines if "{  }" not in line) + "\n"


def resolvers(resolv_conf: str) -> tuple[str, ...]:
    """The ``nameserver`` addresses of a resolv.conf text (what slirp's DNS forwards to)."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(words[1].split("%", 1)[0])))
            except ValueError:
                continue
    return tuple(found)


def qemu_uids(cfg: HostConfig) -> tuple[tuple[int, int], ...]:
    """The uids VMs' QEMUs run as: the per-VM range, and the shared QEMU user when it exists
    (VMs run as it where libvirt cannot give each its own)."""
    uids = [cfg.vm_uid_range]
    for name in SHARED_QEMU_USERS:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        if uid != 0:
            uids.append((uid, uid))
    return tuple(uids)


def _nft(args: Sequence[str], script: str | None = None) -> subprocess.CompletedProcess:
    nft = shutil.which("nft")
    if nft is None:
        raise NetworkError("nft (nftables) is not installed: the guests' network policy "
                           "cannot be enforced",
                           hint="apt-get install nftables, or set HYPERVM_NET_POLICY=off to "
                                "let guests reach the host")
    try:
        return subprocess.run([nft, *args], input=script, capture_output=True, text=True,
                              timeout=_NFT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"nft failed: {e}", hint="check nftables on this host") from e


def enforce(cfg: HostConfig, resolv_conf: str = "") -> None:
    """Install the policy of ``cfg`` (NetworkError when it cannot be: the VM must not boot).
    When the operator turned the policy off, a table left from before is removed (without
    nftables there is nothing to remove)."""
    if not cfg.net_policy.enforce:
        if shutil.which("nft") is not None and installed() is not None:
            remove()
            log.warning("guests' network policy is off (HYPERVM_NET_POLICY=off): guests reach "
                        "the host and whatever it reaches")
        return
    script = ruleset(cfg.net_policy, qemu_uids(cfg), resolvers(resolv_conf))
    record = cfg.run_dir / RECORD
    if _in_force(record, script):
        log.debug("network policy already in force (table inet %s as installed)", TABLE)
        return
    result = _nft(["-f", "-"], script)
    if result.returncode != 0:
        raise NetworkError(f"cannot install the guests' network policy: "
                           f"{result.stderr.strip()[:400]}",
                           hint="run as root on a kernel with nf_tables, or set "
                                "HYPERVM_NET_POLICY=off to let guests reach the host")
    log.debug("network policy in force:\n%s", script)
    _remember(record, script)


def _in_force(record: Path, script: str) -> bool:
    """Whether table ``inet hypervm`` is exactly what installing ``script`` left: the record
    (written by :func:`_remember` after an install of this very script) lists it as nft lists
    it now. Fails closed: no record, another script, a listing that differs (the table gone,
    changed, or a firewall reload) or any error is False (install)."""
    try:
        saved = json.loads(record.read_text())
        if not isinstance(saved, dict) or saved.get("script") != script:
            return False
        listing = installed()
    except (OSError, ValueError):
        return False
    return listing is not None and listing == saved.get("listing")


def _remember(record: Path, script: str) -> None:
    """Record ``script`` with the table's listing right after its install (root-only file in
    the run dir, replaced atomically); without it the next enforce installs again."""
    listing = installed()
    if listing is None:
        return
    try:
        replace_json(record, {"script": script, "listing": listing})
    except OSError as e:
        log.debug("cannot record the network policy in %s: %s", record, e)


def installed() -> str | None:
    """The table as nft lists it now, None when it is not installed (or nft cannot tell)."""
    try:
        result = _nft(["list", "table", "inet", TABLE])
    except NetworkError:
        return None
    return result.stdout if result.returncode == 0 else None


def remove() -> None:
    """Drop the table (tests; an operator turning the policy off)."""
    _nft(["delete", "table", "inet", TABLE])


def describe(policy: NetPolicy) -> str:
    """One line for ``hypervm doctor`` and logs."""
    parts = ["guests reach the outside world; refused: the host (loopback and its addresses), "
             "link-local, multicast"]
    if policy.deny:
        parts.append(", ".join(str(n) for n in policy.deny))
    text = ", ".join(parts)
    if policy.allow_host:
        text += "; allowed host services: " + ", ".join(s.describe() for s in policy.allow_host)
    return re.sub(r"\s+", " ", text)
