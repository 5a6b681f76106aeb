"""executor/network.py: port parsing, Mesos mappings, env, QEMU args, the NETWORK payload, the
host-port checks (on loopback only)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from executor import network
from hypervm import netspec
from hypervm.errors import HypervisorError, InvalidSpec, NetworkError
from hypervm.netspec import NetworkSpec, PortMapping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortMapping(8080, 80)),
        ("8080:80/udp", PortMapping(8080, 80, "udp")),
        ("127.0.0.1:8080:80", PortMapping(8080, 80, "tcp", "127.0.0.1")),
        ("127.0.0.1:53:5353/udp", PortMapping(53, 5353, "udp", "127.0.0.1")),
    ],
)
def test_parse_publish(text: str, expected: PortMapping) -> None:
    assert netspec.parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "field"),
    [("80", "--publish"), ("a:80", "--publish"), ("0:80", "--publish.host_port"),
     ("8080:70000", "--publish.container_port"), ("8080:80/sctp", "--publish.protocol"),
     ("localhost:8080:80", "--publish.host_ip"), (":80", "--publish")],
)
def test_parse_publish_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        netspec.parse_publish(text)
    assert err.value.field == field
    assert "-p" in str(err.value) or field != "--publish"


def test_spec_validation() -> None:
    NetworkSpec(ports=(PortMapping(1, 1), PortMapping(1, 1, "udp"))).validate()
    for role in ("*", "eng/web", "team-a.prod"):  # Mesos roles are tenants
        NetworkSpec(tenant=role).validate()
    with pytest.raises(InvalidSpec, match="already published by ports\\[0\\]"):
        NetworkSpec(ports=(PortMapping(8080, 80), PortMapping(8080, 81))).validate()
    with pytest.raises(InvalidSpec) as err:
        NetworkSpec(tenant="bad tenant").validate()
    assert err.value.field == "network.tenant"
    with pytest.raises(InvalidSpec, match="without a network"):
        NetworkSpec(mode="none", ports=(PortMapping(8080, 80),)).validate()
    with pytest.raises(InvalidSpec):
        NetworkSpec(mode="bridge").validate()
    with pytest.raises(InvalidSpec):
        NetworkSpec(extra_hosts=(("db", "not-an-ip"),)).validate()


def test_a_trailing_newline_is_no_part_of_a_tenant_or_host_name() -> None:
    """``re.match`` with ``$`` accepts one trailing newline: a tenant "a\\n" (a pool request's,
    a standby's, a task's role) or an extra host "db\\n" (a line of the guest's /etc/hosts)
    passed the checks before they matched whole."""
    from hypervm.netspec import valid_tenant

    assert valid_tenant("team-a") and valid_tenant("*")
    assert not valid_tenant("team-a\n") and not valid_tenant("team-a\r")
    with pytest.raises(InvalidSpec) as err:
        NetworkSpec(tenant="team-a\n").validate()
    assert err.value.field == "network.tenant"
    NetworkSpec(extra_hosts=(("db.internal", "10.0.2.2"),)).validate()
    for name in ("db\n", "db\n.internal", "db.internal\n"):
        with pytest.raises(InvalidSpec):
            NetworkSpec(extra_hosts=((name, "10.0.2.2"),)).validate()


def test_mesos_ports_map_in_order_and_default_to_the_same_port() -> None:
    mappings = netspec.mappings_from_mesos([(31002, 31003), (31000, 31000)],
                                           [(80, "tcp"), (53, "udp,tcp")])
    assert mappings == (
        PortMapping(31000, 80, "tcp"),
        PortMapping(31002, 53, "udp"),
        PortMapping(31002, 53, "tcp"),
        PortMapping(31003, 31003, "tcp"),
    )
    assert netspec.mappings_from_mesos([]) == ()
    with pytest.raises(InvalidSpec, match="need as many host ports"):
        netspec.mappings_from_mesos([(31000, 31000)], [(80, "tcp"), (81, "tcp")])
    with pytest.raises(InvalidSpec, match="not valid"):
        netspec.mappings_from_mesos([(31001, 31000)])
    with pytest.raises(InvalidSpec):
        netspec.mappings_from_mesos([(31000, 31000)], [(80, "sctp")])


def test_port_env_is_marathons() -> None:
    env = netspec.port_env((PortMapping(31000, 80), PortMapping(31001, 53, "udp"),
                            PortMapping(31001, 53, "tcp")))
    assert env == ("PORT0=31000", "PORT1=31001", "PORT=31000", "PORTS=31000,31001",
                   "PORT_80=31000", "PORT_53=31001")
    assert netspec.port_env(()) == ()


def test_process_env_wins_over_port_env() -> None:
    from executor.guest.protocol import process_payload
    from hypervm.podspec import Process

    payload = process_payload(Process(args=("sh",), env=("PORT0=1",)),
                              ("PORT0=31000", "PORTS=31000"))
    assert payload["env"][1:] == ["PORT0=1", "PORTS=31000"]


def test_qemu_args() -> None:
    spec = NetworkSpec(ports=(PortMapping(8080, 80), PortMapping(5353, 53, "udp", "127.0.0.1")))
    args = network.qemu_args(spec, "52:54:00:aa:bb:cc")
    assert args == (
        "-netdev",
        "user,id=hvnet0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,ipv6=off,"
        "hostfwd=tcp:0.0.0.0:8080-10.0.2.15:80,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53",
        "-device",
        "virtio-net-pci,netdev=hvnet0,mac=52:54:00:aa:bb:cc,bus=pci.0,addr=0x1f,romfile=",
    )
    assert network.qemu_args(NetworkSpec(mode="none"), "52:54:00:aa:bb:cc") == ()


def test_qemu_args_reach_the_domain_xml() -> None:
    from executor.libvirt.domain import DomainSpec
    from executor.libvirt.domain_xml import domain_xml

    args = network.qemu_args(NetworkSpec(ports=(PortMapping(8080, 80),)), "52:54:00:00:00:01")
    xml = domain_xml(DomainSpec(
        name="hypervm-x", accel="tcg", vcpus=1, memory_mib=64, kernel=Path("/k"),
        initrd=Path("/i"), cmdline="quiet", channel_socket=Path("/run/c.sock"),
        console_log=Path("/run/console.log"), qemu_args=args))
    assert "hostfwd=tcp:0.0.0.0:8080-10.0.2.15:80" in xml
    assert "<interface" not in xml  # the NIC is ours, not libvirt's: no tap, no bridge


def test_mac_is_stable_and_local() -> None:
    mac = network.mac_address("hypervm-a-1")
    assert mac == network.mac_address("hypervm-a-1") != network.mac_address("hypervm-a-2")
    assert mac.startswith("52:54:00:") and len(mac) == 17


def test_guest_config() -> None:
    spec = NetworkSpec(extra_hosts=(("db", "10.0.2.2"),))
    config = network.guest_config(spec, "52:54:00:00:00:01", ["web", "side", "web"],
                                  "nameserver 192.0.2.1\nsearch a.example b.example # x\n")
    assert config == {
        "interfaces": [{"mac": "52:54:00:00:00:01", "address": "10.0.2.15", "prefix": 24,
                        "gateway": "10.0.2.2"}],
        "nameservers": ["10.0.2.3"],
        "search": ["a.example", "b.example"],
        "hosts": [
            {"address": "127.0.0.1", "names": ["localhost"]},
            {"address": "::1", "names": ["localhost", "ip6-localhost", "ip6-loopback"]},
            {"address": "10.0.2.15", "names": ["web", "side"]},
            {"address": "10.0.2.2", "names": ["db"]},
        ],
    }
    assert network.guest_config(NetworkSpec(mode="none"), "52:54:00:00:00:01", ["web"]) is None


def test_resolver_search_last_line_wins() -> None:
    assert network.resolver_search("domain x.example\nsearch y.example z.example\n") == (
        "y.example", "z.example")
    assert network.resolver_search("nameserver 127.0.0.53\n") == ()


def test_forward_error_recognises_qemus_message() -> None:
    spec = NetworkSpec(ports=(PortMapping(8080, 80),))
    qemu = HypervisorError("cannot start VM hypervm-x: internal error: qemu unexpectedly closed "
                           "the monitor: -netdev user,...: Could not set up host forwarding rule "
                           "'tcp:0.0.0.0:8080-10.0.2.15:80'")
    err = network.forward_error(qemu, spec)
    assert isinstance(err, NetworkError) and "0.0.0.0:8080->80/tcp" in str(err)
    assert network.forward_error(HypervisorError("no memory"), spec) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_check_host_ports_finds_a_taken_port(kind: int) -> None:
    protocol = "tcp" if kind == socket.SOCK_STREAM else "udp"
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        spec = NetworkSpec(ports=(PortMapping(port, 80, protocol, "127.0.0.1"),))
        with pytest.raises(NetworkError, match=f"host port {port}/{protocol} is already in use"):
            network.check_host_ports(spec)
    network.check_host_ports(spec)  # free again


def test_check_host_ports_refuses_privileged_ports_and_foreign_addresses() -> None:
    with pytest.raises(NetworkError, match="privileged"):
        network.check_host_ports(NetworkSpec(ports=(PortMapping(80, 80, "tcp", "127.0.0.1"),)))
    # TEST-NET-1 is never an address of this host: bind fails without any traffic
    with pytest.raises(NetworkError, match="cannot listen on 192.0.2.1"):
        network.check_host_ports(NetworkSpec(ports=(PortMapping(_free_port(), 80, "tcp",
                                                                "192.0.2.1"),)))


def test_podspec_carries_and_validates_the_network() -> None:
    from hypervm.podspec import Container, PodSpec, Process, Rootfs

    container = Container(name="web", rootfs=Rootfs(layers=(Path("/l"),)),
                          process=Process(args=("true",)))
    assert PodSpec(name="p", containers=(container,)).network == NetworkSpec()
    with pytest.raises(InvalidSpec, match="network.tenant"):
        PodSpec(name="p", containers=(container,),
                network=NetworkSpec(tenant="")).validate()
