"""Published ports on warm pool VMs (no VMs): the HMP command that adds one, what its output
means, the claim protocol carrying the ports, and the daemon publishing them at claim time
(libvirt faked) - the same checks and errors as a cold boot, a VM that lost a port discarded."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor import network
from executor.pool import claim as client
from executor.pool.daemon import WarmPool
from executor.pool.idle import IdleVM as _Idle
from executor.pool.protocol import (
    MAX_CLAIM_PORTS,
    Lease,
    PoolConfig,
    claim_request,
    decode,
    encode,
    error_reply,
    parse_claim,
    unfit_reason,
)
from hypervm.config import config_from_env
from hypervm.errors import HypervisorError, InvalidSpec, NetworkError, PoolError
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs

WEB = PortMapping(8080, 80, "tcp", "127.0.0.1")
DNS = PortMapping(5353, 53, "udp")
TAKEN = "Could not set up host forwarding rule 'tcp:127.0.0.1:8080-10.0.2.15:80'\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the HMP command and its answer -----------------------------------------------------------


def test_hostfwd_add_publishes_the_rule_a_boot_would_have() -> None:
    assert network.hostfwd_add_command(WEB) == "hostfwd_add hvnet0 tcp:127.0.0.1:8080-10.0.2.15:80"
    assert network.hostfwd_add_command(DNS) == "hostfwd_add hvnet0 udp:0.0.0.0:5353-10.0.2.15:53"
    netdev = network.qemu_args(NetworkSpec(ports=(WEB, DNS)), "52:54:00:00:00:01")[1]
    for mapping in (WEB, DNS):
        assert "hostfwd=" + network.hostfwd_add_command(mapping).split()[2] in netdev


def test_nothing_but_a_valid_mapping_reaches_the_monitor() -> None:
    for bad in (PortMapping(8080, 80, "tcp", "127.0.0.1\nquit"),
                PortMapping(8080, 80, "tcp quit"), PortMapping(0, 80)):
        with pytest.raises(InvalidSpec):
            network.hostfwd_add_command(bad)


def test_hostfwd_add_output_is_the_cold_boots_error() -> None:
    spec = NetworkSpec(ports=(WEB,))
    assert network.hostfwd_add_error("", WEB, spec) is None
    assert network.hostfwd_add_error("\r\n", WEB, spec) is None
    err = network.hostfwd_add_error(TAKEN, WEB, spec)
    # what a cold boot reports when QEMU loses the port (executor.network.forward_error)
    cold = network.forward_error(HypervisorError(TAKEN.strip()), spec)
    assert isinstance(err, NetworkError) and cold is not None and str(err) == str(cold)
    assert "127.0.0.1:8080->80/tcp" in str(err) and "a host port is taken" in str(err)
    other = network.hostfwd_add_error("unrecognized netdev id 'hvnet0'\r\n", WEB, spec)
    assert isinstance(other, NetworkError)
    assert "cannot publish port 127.0.0.1:8080->80/tcp: unrecognized netdev" in str(other)


class MonitorHypervisor:
    """libvirt faked: records monitor commands and metadata, answers hostfwd_add with
    ``answers`` (by command) or nothing; ``broken`` VMs raise as a dead domain does."""

    def __init__(self, answers: dict[str, str] | None = None,
                 broken: frozenset[str] = frozenset()) -> None:
        self.answers = answers or {}
        self.broken = broken
        self.commands: list[tuple[str, str]] = []
        self.metadata: dict[str, dict[str, str]] = {}
        self.destroyed: list[str] = []

    def monitor_command(self, name: str, command: str) -> str:
        if name in self.broken:
            raise HypervisorError(f"cannot run hostfwd_add on the monitor of VM {name}: gone")
        self.commands.append((name, command))
        return self.answers.get(command, "")

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        self.metadata[name] = entries

    def destroy(self, name: str) -> None:
        self.destroyed.append(name)

    def is_running(self, name: str) -> bool:
        return name not in self.destroyed

    def alive(self) -> bool:  # the connection to libvirtd (executor.pool.reconnect)
        return True


def test_publish_live_adds_each_port_in_order_and_stops_at_the_first_refused() -> None:
    hv = MonitorHypervisor()
    network.publish_live(hv, "vm", NetworkSpec(ports=(WEB, DNS)))
    assert hv.commands == [("vm", network.hostfwd_add_command(WEB)),
                           ("vm", network.hostfwd_add_command(DNS))]
    hv = MonitorHypervisor({network.hostfwd_add_command(WEB): TAKEN})
    with pytest.raises(NetworkError, match="8080->80/tcp"):
        network.publish_live(hv, "vm", NetworkSpec(ports=(WEB, DNS)))
    assert hv.commands == [("vm", network.hostfwd_add_command(WEB))]
    network.publish_live(hv, "vm", NetworkSpec())  # no ports: no monitor command
    assert len(hv.commands) == 1


# -- the claim protocol -----------------------------------------------------------------------


def _pod(ports: tuple[PortMapping, ...]) -> PodSpec:
    container = Container("web", Rootfs((Path("/l0.erofs"),)), Process(args=("true",)))
    return PodSpec(name="web", containers=(container,), resources=Resources(1, 128),
                   network=NetworkSpec(ports=ports))


def test_pods_with_ports_fit_the_pool() -> None:
    assert unfit_reason(_pod((WEB, DNS)), 1, 128) is None
    many = tuple(PortMapping(10000 + i, 80) for i in range(MAX_CLAIM_PORTS + 1))
    reason = unfit_reason(_pod(many), 1, 128)
    assert reason is not None and f"at most {MAX_CLAIM_PORTS}" in reason


def test_a_claim_carries_the_ports() -> None:
    line = encode(claim_request(1, 128, {"pod": "web"}, ["/c/a.erofs"], (WEB, DNS)))
    claim = parse_claim(decode(line, "request"))
    assert claim.ports == (WEB, DNS) and claim.layers == ("/c/a.erofs",)
    assert "ports" not in claim_request(1, 128)  # the line of a claim without ports is unchanged
    assert parse_claim(claim_request(1, 128)).ports == ()


def _port(**changes: object) -> dict[str, object]:
    return {"host_ip": "127.0.0.1", "host_port": 8080, "container_port": 80, "protocol": "tcp",
            **changes}


@pytest.mark.parametrize(("ports", "words"), [
    ("8080:80", r"claim.ports: must be a list"),
    ([_port()] * (MAX_CLAIM_PORTS + 1), r"claim.ports: must be a list of at most"),
    (["8080:80"], r"claim.ports\[0\]: must be an object"),
    ([{"host_port": 8080}], r"claim.ports\[0\]: must be an object"),
    ([_port(), _port(extra=1)], r"claim.ports\[1\]: must be an object"),
    ([_port(host_port="8080")], r"claim.ports\[0\]: must be an object"),
    ([_port(host_port=True)], r"claim.ports\[0\]: must be an object"),
    ([_port(host_port=0)], r"claim.network.ports\[0\].host_port"),
    ([_port(container_port=70000)], r"claim.network.ports\[0\].container_port"),
    ([_port(protocol="sctp")], r"claim.network.ports\[0\].protocol"),
    ([_port(host_ip="::1")], r"claim.network.ports\[0\].host_ip"),
    ([_port(host_ip="127.0.0.1 quit")], r"claim.network.ports\[0\].host_ip"),
    ([_port(protocol="tcp quit")], r"claim.network.ports\[0\].protocol"),
    ([_port(), _port(container_port=81)], r"claim.network.ports\[1\]: host port 8080/tcp is "
                                          "already published"),
])
def test_bad_claim_ports_name_the_entry(ports: object, words: str) -> None:
    with pytest.raises(PoolError, match=words):
        parse_claim({"op": "claim", "vcpus": 1, "memory_mib": 128, "ports": ports})


def test_a_port_error_crosses_the_socket_as_the_same_network_error() -> None:
    err = NetworkError("ports[0] (127.0.0.1:8080->80/tcp): host port 8080/tcp is already in "
                       "use", hint="choose another host port or stop what listens on it")
    with pytest.raises(NetworkError) as raised:
        Lease.from_reply(decode(encode(error_reply(err)), "reply"))
    assert str(raised.value) == str(err) and raised.value.hint == err.hint
    # any other failure stays a PoolError (the claimer boots cold)
    with pytest.raises(PoolError, match="no warm VM"):
        Lease.from_reply(decode(encode(error_reply(PoolError("no warm VM is ready"))), "r"))


def test_the_claim_client_raises_the_pools_network_error(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "pool.sock"))
    server.listen(1)
    seen: list[dict] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(decode(conn.recv(65536), "request"))
            conn.sendall(encode(error_reply(NetworkError("ports[0]: in use", hint="pick one"))))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    try:
        with pytest.raises(NetworkError, match=r"ports\[0\]: in use \(pick one\)"):
            client.claim(cfg, 1, 128, {"pod": "web"}, [], ports=(WEB,))
    finally:
        thread.join(5)
        server.close()
    assert seen[0]["ports"] == [_port()]


# -- the daemon publishes them at claim time ---------------------------------------------------


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WarmPool]:
    """A pool of three idle VMs whose boots never happened (libvirt faked, no refill)."""
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    pool = WarmPool(cfg, PoolConfig(size=3))
    pool._hv = MonitorHypervisor()
    pool._stopping.set()
    for i in range(3):
        a, b = socket.socketpair()
        b.close()
        run_dir = tmp_path / f"vm{i}"
        run_dir.mkdir()
        pool._idle.append(_Idle(f"vm{i}", run_dir, a, {"version": 1}))
    yield pool
    for vm in pool._idle:
        vm.sock.close()


def test_a_claim_publishes_the_ports_before_it_answers(pool: WarmPool) -> None:
    web = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    lease, sock = pool.claim(1, 128, os.getpid(), {"pod": "web"}, ports=(web,))
    sock.close()
    assert lease.vm == "vm0"
    assert pool._hv.commands == [("vm0", network.hostfwd_add_command(web))]
    assert pool._hv.metadata["vm0"]["pool-state"] == "claimed"
    lease, sock = pool.claim(1, 128, os.getpid())  # no ports: no monitor command
    sock.close()
    assert len(pool._hv.commands) == 1 and pool.claims == 2


def test_a_taken_port_fails_the_claim_before_a_vm_is_taken(pool: WarmPool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NetworkError) as err:
            pool.claim(1, 128, os.getpid(), ports=(PortMapping(port, 80, "tcp", "127.0.0.1"),))
    # the cold boot's error (executor.network.check_host_ports), word for word
    assert str(err.value) == (f"ports[0] (127.0.0.1:{port}->80/tcp): host port {port}/tcp is "
                              "already in use (choose another host port or stop what listens "
                              "on it)")
    assert pool.idle_vms() == ["vm0", "vm1", "vm2"] and pool._hv.commands == []
    assert pool.claims == 0 and pool._hv.destroyed == []


def test_a_privileged_port_fails_the_claim_as_a_cold_boot_does(pool: WarmPool) -> None:
    low = network.unprivileged_port_start()
    if low == 0:
        pytest.skip("this host lets every user bind every port")
    with pytest.raises(NetworkError, match=f"host port {low - 1} is privileged"):
        pool.claim(1, 128, os.getpid(), ports=(PortMapping(low - 1, 80, "tcp", "127.0.0.1"),))
    assert pool.idle_vms() == ["vm0", "vm1", "vm2"]


def test_a_vm_that_loses_a_port_is_discarded_not_handed_out(pool: WarmPool) -> None:
    first, second = (PortMapping(free_port(), p, "tcp", "127.0.0.1") for p in (80, 81))
    pool._hv.answers = {network.hostfwd_add_command(second): TAKEN}
    with pytest.raises(NetworkError, match=f"127.0.0.1:{second.host_port}->81/tcp"):
        pool.claim(1, 128, os.getpid(), ports=(first, second))
    # vm0 had the first port published: destroyed, its run dir gone, no other VM tried
    assert pool._hv.destroyed == ["vm0"] and not (pool.cfg.vms_dir / "vm0").exists()
    assert pool.idle_vms() == ["vm1", "vm2"] and "vm0" not in pool._hv.metadata
    assert pool.claims == 0


def test_a_vm_whose_monitor_fails_is_discarded_and_the_next_serves(pool: WarmPool) -> None:
    pool._hv.broken = frozenset({"vm0"})
    web = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    lease, sock = pool.claim(1, 128, os.getpid(), ports=(web,))
    sock.close()
    assert lease.vm == "vm1" and pool._hv.destroyed == ["vm0"]
    assert pool._hv.commands == [("vm1", network.hostfwd_add_command(web))]


def test_the_bench_task_publishes_one_port_through_its_resources() -> None:
    from bench.launch import task
    from executor.mesos.taskinfo import port_ranges

    assert port_ranges(task("t", "busybox", 31000)["resources"], "resources") == ((31000, 31000),)
    assert port_ranges(task("t", "busybox")["resources"], "resources") == ()


def test_the_lease_tells_the_vms_identity_so_the_claimer_asks_libvirt_nothing() -> None:
    own = Lease(vm="v", run_dir=Path("/r"), ready={}, identity=(100000, 100000),
                identity_known=True)
    shared = Lease(vm="v", run_dir=Path("/r"), ready={}, identity_known=True)
    for lease in (own, shared):
        assert Lease.from_reply(decode(encode(lease.reply()), "reply")) == lease
    # a pool that does not say: the claimer asks libvirt (executor.pool.adopt)
    assert not Lease.from_reply({"vm": "v", "run_dir": "/r", "ready": {}}).identity_known
    for bad in ([0, 0], [1], [1, "2"], [True, 1], "1:1"):
        with pytest.raises(PoolError, match="malformed"):
            Lease.from_reply({"vm": "v", "run_dir": "/r", "ready": {}, "identity": bad})


def test_a_claim_hands_over_the_identity_the_vm_booted_with(pool: WarmPool) -> None:
    pool._idle[0].identity = (100007, 100007)
    lease, sock = pool.claim(1, 128, os.getpid())
    sock.close()
    assert lease.identity == (100007, 100007) and lease.identity_known


def test_a_bad_mapping_given_in_process_takes_no_vm(pool: WarmPool) -> None:
    with pytest.raises(InvalidSpec):
        pool.claim(1, 128, os.getpid(), ports=(PortMapping(8080, 80, "tcp quit"),))
    assert pool.idle_vms() == ["vm0", "vm1", "vm2"] and pool._hv.destroyed == []
