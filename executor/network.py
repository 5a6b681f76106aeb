"""A HyperVM's network backend: the QEMU NIC, what the guest init configures, and the
host-side checks and ports published on a running VM (the only side effects). The pure spec
(:class:`NetworkSpec`, port mappings, their parsers) is ``hypervm.netspec``.

The backend is QEMU user-mode networking (slirp): every VM gets a private 10.0.2.0/24 inside
its own QEMU process, the host is 10.0.2.2 (its loopback: refused by the network policy,
``executor.netpolicy``, but for the services the operator allow-lists), DNS is slirp's proxy
at 10.0.2.3 (it follows the host's resolv.conf), and published ports are ``hostfwd``
listeners of that QEMU process (given at boot, or added over its monitor when a warm pool VM
is claimed: :func:`publish_live`). No tap or bridge exists, so nothing of a VM can leak at
teardown, and VMs cannot reach each other, whatever their tenant (README, "Networking").
A bridged/NAT backend can be added here later: everything outside this module only sees
:class:`NetworkSpec`, :func:`qemu_args`, :func:`guest_config`, :func:`check_host_ports` and
:func:`publish_live`.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from pathlib import Path

from hypervm.digest import sha256
from hypervm.errors import HyperVMError, NetworkError
from hypervm.netspec import (
    DNS_ADDRESS,
    GUEST_ADDRESS,
    GUEST_NETWORK,
    HOST_ADDRESS,
    NetworkSpec,
    PortMapping,
)

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NETDEV_ID = "hvnet0"
NIC_PCI_SLOT = 0x1F


# --- what the domain and the guest need ----------------------------------------------------


def mac_address(vm_name: str) -> str:
    """A stable, locally administered MAC for the VM (QEMU/libvirt's 52:54:00 prefix)."""
    digest = sha256(vm_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def qemu_args(spec: NetworkSpec, mac: str) -> tuple[str, ...]:
    """The ``<qemu:commandline>`` arguments for the VM's NIC (nothing for mode "none")."""
    if spec.mode == "none":
        return ()
    netdev = [f"user,id={_NETDEV_ID}", f"net={GUEST_NETWORK}", f"host={HOST_ADDRESS}",
              f"dns={DNS_ADDRESS}", f"dhcpstart={GUEST_ADDRESS}", "ipv6=off"]
    netdev += [f"hostfwd={hostfwd_rule(m)}" for m in spec.ports]
    # QEMU places our -device before libvirt's own ones: a fixed slot at the top of the bus
    # keeps it out of libvirt's way (libvirt fills slots from 2 up, DomainSpec allows 24).
    # romfile= : no PXE option ROM to load, the guest never network-boots
    device = (f"virtio-net-pci,netdev={_NETDEV_ID},mac={mac},bus=pci.0,addr={NIC_PCI_SLOT:#x},"
              "romfile=")
    return ("-netdev", ",".join(netdev), "-device", device)


def hostfwd_rule(mapping: PortMapping) -> str:
    """QEMU's text for one published port, the same at boot (``hostfwd=``) and on a running
    VM (:func:`hostfwd_add_command`): host address and port to the guest's."""
    return (f"{mapping.protocol}:{mapping.host_ip}:{mapping.host_port}-{GUEST_ADDRESS}:"
            f"{mapping.container_port}")


def hostfwd_add_command(mapping: PortMapping) -> str:
    """The HMP command that publishes ``mapping`` on a running VM's NIC (a claimed pool VM,
    booted without ports): the rule :func:`qemu_args` would have given it at boot. Validated
    here too: nothing but a port mapping ever reaches the monitor (InvalidSpec)."""
    mapping.validate("port")
    return f"hostfwd_add {_NETDEV_ID} {hostfwd_rule(mapping)}"


def resolver_search(resolv_conf: str) -> tuple[str, ...]:
    """The ``search`` (or ``domain``) list of a resolv.conf text; the last line wins, as in
    glibc."""
    search: tuple[str, ...] = ()
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] in ("search", "domain"):
            search = tuple(w for w in words[1:] if re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", w))
    return search[:6]


def guest_config(spec: NetworkSpec, mac: str, hostnames: Sequence[str],
                 host_resolv_conf: str = "", *, interfaces: bool = True) -> dict[str, Any] | None:
    """The NETWORK request's payload (init/PROTOCOL.md), or None for mode "none".

    The guest resolves through slirp's DNS proxy (which forwards to the host's resolvers) with
    the host's search domains; /etc/hosts names the VM's address after every container.
    ``interfaces=False`` leaves the interface as it is: a pool VM's was configured at boot
    (bringing a virtio NIC up is the costly part under TCG).
    """
    if spec.mode == "none":
        return None
    names = list(dict.fromkeys(hostnames))
    hosts = [
        {"address": "127.0.0.1", "names": ["localhost"]},
        {"address": "::1", "names": ["localhost", "ip6-localhost", "ip6-loopback"]},
    ]
    if names:
        hosts.append({"address": GUEST_ADDRESS, "names": names[:8]})
    hosts += [{"address": address, "names": [name]} for name, address in spec.extra_hosts]
    config: dict[str, Any] = {
        "nameservers": [DNS_ADDRESS],
        "search": list(resolver_search(host_resolv_conf)),
        "hosts": hosts,
    }
    if interfaces:
        config["interfaces"] = [{
            "mac": mac,
            "address": GUEST_ADDRESS,
            "prefix": GUEST_NETWORK.prefixlen,
            "gateway": HOST_ADDRESS,
        }]
    return config


def forward_error(err: HyperVMError, spec: NetworkSpec) -> NetworkError | None:
    """The NetworkError behind a failed domain start, when QEMU could not listen on a published
    port (a race lost after :func:`check_host_ports`); None when the failure is another one."""
    text = str(err)
    if "host forwarding rule" not in text and "hostfwd" not in text:
        return None
    ports = ", ".join(m.describe() for m in spec.ports)
    return NetworkError(f"cannot publish ports {ports}: {text}",
                        hint="a host port is taken; choose another one")


def hostfwd_add_error(output: str, mapping: PortMapping, spec: NetworkSpec) -> NetworkError | None:
    """What ``hostfwd_add`` answered (HMP prints nothing on success): None when ``mapping`` is
    published, else the NetworkError a cold boot gives for it (:func:`forward_error`: QEMU
    could not listen, a race lost after :func:`check_host_ports`)."""
    text = " ".join(output.split())
    if not text:
        return None
    return forward_error(HyperVMError(text), spec) or NetworkError(
        f"cannot publish port {mapping.describe()}: {text[:300]}",
        hint="check the port mapping")


# --- host-side checks (side effects) -------------------------------------------------------


def host_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def unprivileged_port_start(path: Path = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                            ) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 1024


def check_host_ports(spec: NetworkSpec, *, qemu_is_root: bool = False) -> None:
    """Raise NetworkError naming the first published host port that QEMU could not listen on.

    Binds each port the way slirp does (SO_REUSEADDR, so TIME_WAIT leftovers do not count) and
    closes it at once; QEMU may still lose a race for the port, see :func:`forward_error`.
    """
    if not spec.ports:
        return
    # deferred: published ports only; a cold run without them does not import socket before
    # its createXML (~2 ms, issue 17)
    import socket

    lowest = 0 if qemu_is_root else unprivileged_port_start()
    for i, mapping in enumerate(spec.ports):
        where = f"ports[{i}] ({mapping.describe()})"
        if mapping.host_port < lowest:
            raise NetworkError(
                f"{where}: host port {mapping.host_port} is privileged and QEMU does not run "
                f"as root", hint=f"publish a host port >= {lowest}")
        kind = socket.SOCK_STREAM if mapping.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((mapping.host_ip, mapping.host_port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise NetworkError(
                        f"{where}: host port {mapping.host_port}/{mapping.protocol} is already "
                        f"in use", hint="choose another host port or stop what listens on it"
                    ) from e
                raise NetworkError(f"{where}: cannot listen on {mapping.host_ip}:"
                                   f"{mapping.host_port}: {e.strerror}",
                                   hint="use an address of this host, e.g. 127.0.0.1") from e


def publish_live(hypervisor: Any, name: str, spec: NetworkSpec) -> None:
    """Publish ``spec``'s ports on the running VM ``name`` (``hostfwd_add`` over its monitor,
    ``hypervisor.monitor_command``), in order: what :func:`qemu_args` does at boot, for a
    claimed pool VM. Check them first with :func:`check_host_ports`. NetworkError when QEMU
    cannot listen on one (the VM then has some ports published: discard it); HypervisorError
    when the VM cannot be reached."""
    for mapping in spec.ports:
        output = hypervisor.monitor_command(name, hostfwd_add_command(mapping))
        error = hostfwd_add_error(output, mapping, spec)
        if error is not None:
            raise error
