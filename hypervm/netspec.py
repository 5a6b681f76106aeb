"""A HyperVM's network as pure values: the spec, port mappings and their parsers (Docker's
``-p`` syntax, Mesos ``ports`` resources) and what a task learns of its ports.

What the domain and the guest are given (QEMU arguments, the guest's configuration) and the
host-side checks live in ``executor.network``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import field

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

MODES = ("user", "none")
PROTOCOLS = ("tcp", "udp")
#: the guest's side of every user-mode network (QEMU's defaults, spelled out)
GUEST_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
GUEST_ADDRESS = "10.0.2.15"
#: the host as the guest sees it: traffic to it reaches the host's loopback
HOST_ADDRESS = "10.0.2.2"
DNS_ADDRESS = "10.0.2.3"
DEFAULT_HOST_IP = "0.0.0.0"
#: a tenant is a Mesos role (``*`` included) or the CLI's --tenant: printable ASCII without
#: space or backslash, as Mesos allows in role names
#: (matched whole: ``$`` alone would let a trailing newline through)
_TENANT_RE = re.compile(r"[\x21-\x5b\x5d-\x7e]{1,128}")


def valid_tenant(name: object) -> bool:
    """Whether ``name`` may name a tenant (NetworkSpec.tenant, a standby request's)."""
    return isinstance(name, str) and bool(_TENANT_RE.fullmatch(name))


#: one label of a host name (matched whole, as the tenant)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@frozen_dataclass
class PortMapping:
    """Host ``host_ip:host_port`` forwards to ``container_port`` in the VM (all containers of a
    pod share the VM's network, so the port is the pod's)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = DEFAULT_HOST_IP

    def validate(self, where: str) -> None:
        for name, port in (("host_port", self.host_port), ("container_port", self.container_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidSpec(f"{where}.{name}", f"{port!r} is not a port number",
                                  hint="use 1..65535")
        if self.protocol not in PROTOCOLS:
            raise InvalidSpec(f"{where}.protocol", f"unknown protocol {self.protocol!r}",
                              hint="use tcp or udp")
        try:
            ipaddress.IPv4Address(self.host_ip)
        except ValueError as e:
            raise InvalidSpec(f"{where}.host_ip", f"{self.host_ip!r} is not an IPv4 address",
                              hint="use e.g. 127.0.0.1, or leave it out for all addresses") from e

    def describe(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


@frozen_dataclass
class NetworkSpec:
    """``mode`` "user" (the default: a NIC on a private user-mode network) or "none" (no NIC,
    only loopback). ``tenant`` is recorded on the VM; with user-mode networking every VM is
    isolated from every other one, so tenants need no further separation."""

    mode: str = "user"
    ports: tuple[PortMapping, ...] = ()
    tenant: str = "default"
    extra_hosts: tuple[tuple[str, str], ...] = field(default=())

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InvalidSpec("network.mode", f"unknown mode {self.mode!r}",
                              hint="use " + " or ".join(MODES))
        if not valid_tenant(self.tenant):
            raise InvalidSpec("network.tenant", f"{self.tenant!r} is not a valid tenant name",
                              hint="use 1..128 printable characters, no space or backslash")
        if self.mode == "none" and self.ports:
            raise InvalidSpec("network.ports", "ports cannot be published without a network",
                              hint="use network mode user")
        seen: dict[tuple[str, int], int] = {}
        for i, mapping in enumerate(self.ports):
            mapping.validate(f"network.ports[{i}]")
            key = (mapping.protocol, mapping.host_port)
            if key in seen:
                raise InvalidSpec(f"network.ports[{i}]",
                                  f"host port {mapping.host_port}/{mapping.protocol} is "
                                  f"already published by ports[{seen[key]}]",
                                  hint="publish each host port once")
            seen[key] = i
        for name, address in self.extra_hosts:
            _check_hostname("network.extra_hosts", name)
            try:
                ipaddress.ip_address(address)
            except ValueError as e:
                raise InvalidSpec("network.extra_hosts", f"{address!r} is not an IP address") \
                    from e


def _check_hostname(where: str, name: str) -> None:
    if not all(_HOSTNAME_RE.fullmatch(label) for label in name.split(".")) or len(name) > 253:
        raise InvalidSpec(where, f"{name!r} is not a valid host name",
                          hint="use letters, digits and '-', labels separated by '.'")


# --- parsing the user's and Mesos' port descriptions ---------------------------------------


def parse_publish(text: str) -> PortMapping:
    """``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`` (Docker's syntax)."""
    spec, _, protocol = text.partition("/")
    parts = spec.split(":")
    hint = "use -p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp], e.g. -p 8080:80"
    if len(parts) not in (2, 3) or not all(parts[-2:]):
        raise InvalidSpec("--publish", f"{text!r} is not HOST_PORT:CONTAINER_PORT", hint=hint)
    host_ip = parts[0] if len(parts) == 3 else DEFAULT_HOST_IP
    try:
        host_port, container_port = int(parts[-2]), int(parts[-1])
    except ValueError as e:
        raise InvalidSpec("--publish", f"{text!r}: ports must be numbers", hint=hint) from e
    mapping = PortMapping(host_port, container_port, protocol or "tcp", host_ip or DEFAULT_HOST_IP)
    mapping.validate("--publish")
    return mapping


def mappings_from_mesos(port_ranges: Iterable[tuple[int, int]],
                        container_ports: Sequence[tuple[int, str]] | None = None,
                        host_ip: str = DEFAULT_HOST_IP) -> tuple[PortMapping, ...]:
    """Port mappings for a task from its Mesos ``ports`` resources.

    ``port_ranges`` are the ``ranges.range`` of the task's ``ports`` resources (begin, end
    inclusive); the host ports are taken in ascending order. ``container_ports`` are the
    (port, protocol) pairs the task listens on, in order (DiscoveryInfo ports, or Marathon
    ``portMappings[].containerPort``); the i-th host port forwards to the i-th of them. Host
    ports beyond them map to the same port number in the VM (a task that binds ``$PORT0``
    works as on a Mesos agent). A protocol "udp,tcp" or "tcp,udp" forwards both.
    """
    host_ports: list[int] = []
    for begin, end in sorted(port_ranges):
        if not 1 <= begin <= end <= 65535:
            raise InvalidSpec("resources.ports", f"range [{begin}-{end}] is not valid",
                              hint="ranges are 1..65535, begin <= end")
        host_ports.extend(range(begin, end + 1))
    wanted = list(container_ports or ())
    if len(wanted) > len(host_ports):
        raise InvalidSpec("resources.ports",
                          f"{len(wanted)} container ports need as many host ports, "
                          f"the task has {len(host_ports)}",
                          hint="request one host port per container port")
    mappings: list[PortMapping] = []
    for i, host_port in enumerate(host_ports):
        container_port, protocols = wanted[i] if i < len(wanted) else (host_port, "tcp")
        for protocol in (protocols or "tcp").lower().split(","):
            mappings.append(PortMapping(host_port, container_port, protocol.strip(), host_ip))
    for i, mapping in enumerate(mappings):
        mapping.validate(f"resources.ports[{i}]")
    return tuple(mappings)


def port_env(ports: Sequence[PortMapping]) -> tuple[str, ...]:
    """What a Mesos/Marathon task learns about its ports: ``PORT0..N`` and ``PORTS`` are the
    host ports in order (one per distinct host port), ``PORT_<container port>`` the host port
    that reaches it (Marathon's names). Empty without ports."""
    host_ports: list[int] = []
    by_container: dict[int, int] = {}
    for mapping in ports:
        if mapping.host_port not in host_ports:
            host_ports.append(mapping.host_port)
        by_container.setdefault(mapping.container_port, mapping.host_port)
    if not host_ports:
        return ()
    env = [f"PORT{i}={port}" for i, port in enumerate(host_ports)]
    env.append("PORT=" + str(host_ports[0]))
    env.append("PORTS=" + ",".join(str(p) for p in host_ports))
    env.extend(f"PORT_{c}={h}" for c, h in by_container.items())
    return tuple(env)
