"""Issue 18: a claim with ``ports_later`` is answered before the pool publishes its ports (the
monitor round trips overlap the claimer's take-over); the outcome comes on a second line, which
the claimer reads before anything starts in the VM. A lost port still destroys the VM and
reaches the claimer as the cold boot's NetworkError. (No VMs: libvirt faked.)"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from executor import network
from executor.pool import claim as client
from executor.pool.daemon import WarmPool
from executor.pool.protocol import (
    PORTS_PUBLISHED,
    Lease,
    check_ports_reply,
    claim_request,
    decode,
    encode,
    error_reply,
    parse_claim,
)
from hypervm.config import config_from_env
from hypervm.errors import NetworkError, PoolError
from hypervm.netspec import PortMapping
from tests.unit.test_pool_ports import TAKEN, WEB, free_port, pool  # noqa: F401 - fixture

__all__ = ["pool"]
_PEERS: list[socket.socket] = []


def test_ports_later_crosses_the_protocol() -> None:
    request = claim_request(1, 128, ports=(WEB,), ports_later=True)
    assert request["ports_later"] is True and parse_claim(request).ports_later
    assert "ports_later" not in claim_request(1, 128, ports_later=True)  # no ports: old line
    assert not parse_claim(claim_request(1, 128, ports=(WEB,))).ports_later
    with pytest.raises(PoolError, match="claim.ports_later"):
        parse_claim({**request, "ports_later": "yes"})
    lease = Lease(vm="v", run_dir=Path("/r"), ready={}, ports_pending=True)
    assert Lease.from_reply(decode(encode(lease.reply()), "reply")) == lease
    assert "ports_pending" not in Lease(vm="v", run_dir=Path("/r"), ready={}).reply()
    with pytest.raises(PoolError, match="malformed"):
        Lease.from_reply({**lease.reply(), "ports_pending": 1})


def test_the_second_line_is_published_or_the_cold_boots_error() -> None:
    check_ports_reply(decode(encode(PORTS_PUBLISHED), "ports"))
    err = NetworkError("ports[0] (127.0.0.1:8080->80/tcp): a host port is taken", hint="h")
    with pytest.raises(NetworkError) as raised:
        check_ports_reply(decode(encode(error_reply(err)), "ports"))
    assert str(raised.value) == str(err)
    for bad in ({"ports": "maybe"}, {}, {"vm": "v"}):
        with pytest.raises(PoolError, match="malformed"):
            check_ports_reply(bad)


def test_a_ports_later_claim_publishes_after_its_answer(pool: WarmPool) -> None:  # noqa: F811
    web = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    lease, sock = pool.claim(1, 128, os.getpid(), ports=(web,), ports_later=True)
    sock.close()
    assert lease.ports_pending and pool._hv.commands == []  # checked, not published yet
    assert pool.publish_claimed(lease.vm, (web,)) == PORTS_PUBLISHED
    assert pool._hv.commands == [(lease.vm, network.hostfwd_add_command(web))]
    lease, sock = pool.claim(1, 128, os.getpid(), ports_later=True)  # no ports: nothing later
    sock.close()
    assert not lease.ports_pending


def test_a_ports_later_vm_that_loses_a_port_is_destroyed(pool: WarmPool) -> None:  # noqa: F811
    first, second = (PortMapping(free_port(), p, "tcp", "127.0.0.1") for p in (80, 81))
    pool._hv.answers = {network.hostfwd_add_command(second): TAKEN}
    lease, sock = pool.claim(1, 128, os.getpid(), ports=(first, second), ports_later=True)
    sock.close()
    reply = pool.publish_claimed(lease.vm, (first, second))
    with pytest.raises(NetworkError, match=f"127.0.0.1:{second.host_port}->81/tcp"):
        check_ports_reply(reply)
    # the claimed VM had the first port published: destroyed, its run dir gone, no longer
    # anybody's claim (a later record_claim writes nothing)
    assert pool._hv.destroyed == [lease.vm] and not (pool.cfg.vms_dir / lease.vm).exists()
    assert lease.vm not in pool._claimers


def _serve_claims(pool: WarmPool, count: int) -> threading.Thread:  # noqa: F811
    """Serve ``count`` connections with the daemon's own handler; its idle VMs get guest
    channel sockets whose peer stays open (a claim checks it)."""
    for vm in pool._idle:
        vm.sock.close()
        vm.sock, peer = socket.socketpair()
        _PEERS.append(peer)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(pool.cfg.pool_socket))
    server.listen(count)

    def serve() -> None:
        with server:
            for _ in range(count):
                conn, _ = server.accept()
                pool._handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_claimer_waits_for_the_published_ports(pool: WarmPool) -> None:  # noqa: F811
    web = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    thread = _serve_claims(pool, 1)
    lease, sock, ports = client.claim_ports_later(pool.cfg, 1, 128, {"pod": "web"},
                                                  ports=(web,))
    sock.close()
    assert lease.ports_pending and ports is not None
    ports.wait(5)
    thread.join(5)
    assert pool._hv.commands == [(lease.vm, network.hostfwd_add_command(web))]
    pool._records.flush()  # the owner record comes later (executor.pool.deferred)
    assert pool._hv.metadata[lease.vm]["pool-state"] == "claimed"


def test_the_claimer_gets_the_lost_port_as_the_cold_boots_error(
        pool: WarmPool) -> None:  # noqa: F811
    web = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    pool._hv.answers = {network.hostfwd_add_command(web): TAKEN}
    thread = _serve_claims(pool, 1)
    lease, sock, ports = client.claim_ports_later(pool.cfg, 1, 128, ports=(web,))
    sock.close()
    assert ports is not None
    with pytest.raises(NetworkError, match="a host port is taken"):
        ports.wait(5)
    thread.join(5)
    pool._records.flush()
    assert pool._hv.destroyed == [lease.vm] and lease.vm not in pool._hv.metadata


def test_an_old_pool_answers_once_and_the_claimer_reads_nothing_more(tmp_path: Path) -> None:
    """A pool without ports_later published before its answer: no second line is awaited."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "pool.sock"))
    server.listen(1)
    ours, theirs = socket.socketpair()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            decode(conn.recv(65536), "request")
            socket.send_fds(conn, [encode({"vm": "v", "run_dir": "/r", "ready": {}})],
                            [theirs.fileno()])
            conn.recv(1)  # held open: a claimer waiting for more would hang here

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    try:
        lease, sock, ports = client.claim_ports_later(cfg, 1, 128, ports=(WEB,))
        sock.close()
        assert ports is None and not lease.ports_pending
    finally:
        thread.join(5)
        server.close()
        ours.close()
        theirs.close()
