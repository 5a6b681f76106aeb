"""The claiming side of the warm pool against a fake pool on a unix socket (no VMs): the
descriptor travels with the reply, and every failure is a PoolError (the caller boots cold)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.cli.doctor import check_pool
from executor.pool import claim as warm
from executor.pool.protocol import decode, encode
from hypervm.config import config_from_env
from hypervm.errors import PoolError

Reply = Callable[[socket.socket, dict], None]


@pytest.fixture
def fake_pool(tmp_path: Path) -> Iterator[Callable[[Reply], object]]:
    """Serve one reply function on a unix socket; yields a factory returning the config."""
    servers: list[socket.socket] = []

    def start(reply: Reply) -> object:
        path = tmp_path / "pool.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(4)
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    data = b""
                    while not data.endswith(b"\n"):
                        data += conn.recv(4096)
                    reply(conn, decode(data, "request"))

        threading.Thread(target=serve, daemon=True).start()
        return config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})

    yield start
    for server in servers:
        server.close()


def test_claim_receives_the_lease_and_a_connected_socket(fake_pool) -> None:  # noqa: ANN001
    left, right = socket.socketpair()
    seen: list[dict] = []

    def reply(conn: socket.socket, request: dict) -> None:
        seen.append(request)
        socket.send_fds(conn, [encode({"vm": "hypervm-pool-1", "run_dir": "/run/x",
                                       "ready": {"version": 1}, "layers_attached": True})],
                        [right.fileno()])

    cfg = fake_pool(reply)
    lease, sock = warm.claim(cfg, 1, 128, {"pod": "web"}, ["/c/a.erofs", "/c/b.erofs"])
    try:
        assert seen == [{"op": "claim", "vcpus": 1, "memory_mib": 128,
                         "metadata": {"pod": "web"}, "layers": ["/c/a.erofs", "/c/b.erofs"]}]
        assert (lease.vm, lease.run_dir, lease.ready) == ("hypervm-pool-1", Path("/run/x"),
                                                          {"version": 1})
        assert lease.layers_attached
        sock.sendall(b"ping")  # the descriptor is the other end of our pair
        assert left.recv(4) == b"ping"
    finally:
        sock.close()
        left.close()
        right.close()


@pytest.mark.parametrize(("message", "words"), [
    ({"error": "no warm VM is ready"}, "no warm VM is ready"),
    ({"vm": "hypervm-pool-1", "run_dir": "/r", "ready": {}}, "0 descriptors"),
    ({"vm": 1}, "malformed claim reply"),
    ({"vm": "v", "run_dir": "/r", "ready": {}, "layers_attached": "yes"},
     "malformed claim reply"),
])
def test_a_refused_or_broken_claim_is_a_pool_error(fake_pool, message: dict,  # noqa: ANN001
                                                   words: str) -> None:
    cfg = fake_pool(lambda conn, _: conn.sendall(encode(message)))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PoolError, match=words):
        warm.claim(cfg, 1, 128)
    # no descriptor leaked (a leak stays; another test's thread may hold one for a moment)
    deadline = time.monotonic() + 2.0
    while len(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) == before


def test_garbage_and_silence_are_pool_errors(fake_pool) -> None:  # noqa: ANN001
    cfg = fake_pool(lambda conn, _: conn.sendall(b"<html>\n"))
    with pytest.raises(PoolError, match="pool reply: not JSON"):
        warm.claim(cfg, 1, 128)


def test_no_pool_and_a_dead_socket(tmp_path: Path) -> None:
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    with pytest.raises(PoolError, match="no warm pool serves at"):
        warm.claim(cfg, 1, 128)
    assert check_pool(cfg).ok and "boot cold" in check_pool(cfg).detail
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(cfg.pool_socket))  # bound, never listening: a crashed daemon's leftover
    dead.close()
    with pytest.raises(PoolError, match="does not answer"):
        warm.status(cfg)
    check = check_pool(cfg)
    assert not check.ok and check.fix and "stale" in check.fix
    off = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path), "HYPERVM_POOL": "off"})
    assert check_pool(off).ok and "off" in check_pool(off).detail


def test_doctor_reports_a_serving_pool(fake_pool) -> None:  # noqa: ANN001
    cfg = fake_pool(lambda conn, _: conn.sendall(encode(
        {"name": "pool", "size": 2, "ready": 1, "vcpus": 1, "memory_mib": 128})))
    check = check_pool(cfg)
    assert check.ok and check.detail.startswith("1/2 ready, 1 vCPU / 128 MiB")


def test_doctor_counts_image_vms(fake_pool) -> None:  # noqa: ANN001
    cfg = fake_pool(lambda conn, _: conn.sendall(encode(
        {"name": "pool", "size": 1, "target": 3, "ready": 2, "vcpus": 1, "memory_mib": 128,
         "images": {"web:1": {"ready": 1, "booting": 0}, "db:2": {"ready": 0, "booting": 1}}})))
    check = check_pool(cfg)
    assert check.ok and check.detail.startswith("2/3 ready, 1 vCPU / 128 MiB, 2 images kept")
