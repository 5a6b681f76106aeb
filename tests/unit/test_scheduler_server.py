"""The API's HTTP server (waitress): slow clients hold no worker and are cut off, bodies over
the limit get 413, every request is in the access log."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.api import make_app
from scheduler.errors import ConfigError
from scheduler.server import ServerOptions, address_of, make_server, parse_listen, stop
from scheduler.service import Workloads
from scheduler.store import open_store
from scheduler.tenants import Quota, Tenant, Tenants, hash_token

pytestmark = pytest.mark.timeout(60)
TENANT = Tenant("alice", "alice-role", hash_token("alice-token"), Quota(4, 4096, 4))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []

    def start(**options: Any) -> tuple[str, int]:
        workloads = Workloads(open_store(f"sqlite://{tmp_path}/state{len(servers)}.db"))
        server = make_server(make_app(workloads, Tenants([TENANT])), "127.0.0.1:0",
                             ServerOptions(**options))
        servers.append(server)
        threading.Thread(target=server.run, daemon=True).start()
        return "127.0.0.1", server.effective_port

    yield start
    for server in servers:
        stop(server)


def get(address: tuple[str, int], path: str = "/openapi.json", timeout: float = 5
        ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": "Bearer alice-token"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_slow_clients_hold_no_worker_and_are_cut_off(serve: Any) -> None:
    address = serve(threads=2, channel_timeout=4)
    threads_before = threading.active_count()
    slow = []
    for i in range(30):  # silent, and stuck in the middle of a request's headers
        sock = socket.create_connection(address)
        if i % 2:
            sock.sendall(b"POST /v2/apps HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n")
        slow.append(sock)
    start = time.monotonic()
    code, body = get(address)
    assert code == 200 and json.loads(body)["openapi"]
    assert time.monotonic() - start < 2.0  # served at once, not after the idle timeout
    # a thread per connection (wsgiref's ThreadingMixIn) would be 30 more threads
    assert threading.active_count() <= threads_before + 2
    # idle connections are closed after channel_timeout (checked every cleanup interval)
    assert all(closed_by_server(sock, 10) for sock in slow)
    for sock in slow:
        sock.close()
    assert get(address)[0] == 200


def test_connections_over_the_limit_wait_for_a_free_one(serve: Any) -> None:
    address = serve(threads=2, connection_limit=3, channel_timeout=1)
    idle = [socket.create_connection(address) for _ in range(3)]
    start = time.monotonic()
    code, _ = get(address, timeout=10)  # served once the idle ones are cut off
    assert code == 200 and time.monotonic() - start >= 0.5
    for sock in idle:
        sock.close()


def send(address: tuple[str, int], head: bytes, body: list[bytes]) -> bytes | None:
    """Send a request and read the answer's first bytes (None: the server reset the
    connection while we were still sending what it had refused)."""
    with socket.create_connection(address) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
            return sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return None


def test_an_oversized_body_gets_413(serve: Any) -> None:
    address = serve(max_body=1 << 20)
    auth = b"Authorization: Bearer alice-token\r\nContent-Type: application/json\r\n"
    # the announced length alone is enough: 413 before anything of the body is read
    for length in (1_000_000_000, (1 << 20) + 1):
        reply = send(address, b"POST /v2/apps HTTP/1.1\r\nHost: x\r\n" + auth +
                     f"Content-Length: {length}\r\n\r\n".encode(), [])
        assert reply is not None and reply.startswith(b"HTTP/1.1 413"), reply
    # a body really sent (with its length, or chunked): 413, or a reset if the server closed
    # while we were still sending - refused either way, and nothing is created
    big = [b"x" * 65536] * 32
    chunked = [b"10000\r\n" + c + b"\r\n" for c in big] + [b"0\r\n\r\n"]
    for head, body in (
            (f"Content-Length: {2 << 20}\r\n\r\n".encode(), big),
            (b"Transfer-Encoding: chunked\r\n\r\n", chunked)):
        reply = send(address, b"POST /v2/apps HTTP/1.1\r\nHost: x\r\n" + auth + head, body)
        assert reply is None or reply.startswith(b"HTTP/1.1 413"), reply
    code, listed = get(address, "/v2/apps")
    assert code == 200 and json.loads(listed)["apps"] == []


def test_every_request_is_in_the_access_log(serve: Any, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    address = serve()
    with caplog.at_level(logging.INFO, logger="scheduler.access"):
        assert get(address, "/v2/apps")[0] == 200
        assert get(address, "/v1/pods/nope")[0] == 404
        deadline = time.monotonic() + 5
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "scheduler.access"]
    assert any('127.0.0.1 alice "GET /v2/apps HTTP/1.1" 200' in line for line in lines), lines
    assert any('"GET /v1/pods/nope HTTP/1.1" 404' in line for line in lines), lines
    assert not any("alice-token" in line for line in lines)


def test_listen_addresses_and_options_are_checked(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8080") == {"host": "127.0.0.1", "port": 8080}
    assert parse_listen("[::1]:80") == {"host": "::1", "port": 80}
    assert parse_listen("unix:/run/x.sock")["unix_socket"] == "/run/x.sock"
    for bad in ("8080", "host:99999", "unix:relative.sock"):
        with pytest.raises(ConfigError, match="--listen"):
            parse_listen(bad)
    with pytest.raises(ConfigError, match="--api-threads"):
        ServerOptions(threads=0).check()
    workloads = Workloads(open_store(f"sqlite://{tmp_path}/s.db"))
    server = make_server(make_app(workloads, Tenants([TENANT])), f"unix:{tmp_path}/api.sock")
    try:
        assert address_of(server) == f"unix:{tmp_path}/api.sock"
    finally:
        stop(server)


def unix_get(path: str, headers: str = "") -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(f"GET /v2/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Authorization: Bearer alice-token\r\n{headers}\r\n".encode())
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("trusted", [None, "localhost"])
def test_behind_a_proxy_on_a_unix_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         trusted: str | None) -> None:
    workloads = Workloads(open_store(f"sqlite://{tmp_path}/s.db"))
    path = f"{tmp_path}/api.sock"
    server = make_server(make_app(workloads, Tenants([TENANT])), f"unix:{path}",
                         ServerOptions(trusted_proxy=trusted))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        with caplog.at_level(logging.INFO, logger="scheduler.access"):
            reply = unix_get(path, "X-Forwarded-For: 203.0.113.7\r\n"
                                   "X-Forwarded-Proto: https\r\n")
            assert reply.startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 5
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
        (line,) = [r.getMessage() for r in caplog.records if r.name == "scheduler.access"]
        # the forwarded client only when the proxy is trusted; else the headers are dropped
        assert line.startswith("203.0.113.7 alice" if trusted else "localhost alice"), line
    finally:
        stop(server)
