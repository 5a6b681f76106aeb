"""HA without ZooKeeper: the ``--zk`` URL, the options, and the API gate of a standby (forwards
to the leader as it came, answers /v2/leader, never loops)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
from kazoo.exceptions import ConnectionLoss

from scheduler.cli import main
from scheduler.errors import ConfigError, StorageUnavailable
from scheduler.ha import advertised, parse_zk
from scheduler.leader_proxy import FORWARDED, LeaderGate
from scheduler.store import Store
from scheduler.tenants import hash_token, parse_tenants
from scheduler.zkstore import ZkStore

TENANTS = parse_tenants({"tenants": [{"id": "a", "token_sha256": hash_token("token-a"),
                                      "quota": {"cpus": 1, "mem": 1, "instances": 1}}]})
AUTH = {"Authorization": "Bearer token-a"}


class Leader(BaseHTTPRequestHandler):
    """The leader's API: answers what it got (method, path, headers, body)."""

    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        got = {"method": self.command, "path": self.path, "body": body.decode(),
               "headers": {k.lower(): v for k, v in self.headers.items()}}
        Leader.seen.append(got)
        data = json.dumps(got).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Marathon-Leader", "yes")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def leader() -> Iterator[str]:
    Leader.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Leader)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client(gate: LeaderGate) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(gate)  # type: ignore[arg-type]


def test_a_standby_forwards_the_request_as_it_came(leader: str) -> None:
    gate = LeaderGate(lambda: leader, "127.0.0.1:1", TENANTS)
    resp = client(gate).simulate_post(
        "/v2/apps", params={"force": "true"}, body=b'{"id": "/x"}',
        headers={**AUTH, "Content-Type": "application/json", "Connection": "close",
                 "X-Custom": "1"})
    assert resp.status_code == 201
    assert resp.headers["X-Marathon-Leader"] == "yes"
    got = resp.json
    assert (got["method"], got["path"], got["body"]) == ("POST", "/v2/apps?force=true",
                                                         '{"id": "/x"}')
    assert got["headers"]["authorization"] == "Bearer token-a"
    assert got["headers"]["x-custom"] == "1"
    assert got["headers"][FORWARDED.lower()] == "127.0.0.1:1"
    assert got["headers"]["host"] == leader and got["headers"].get("connection") != "close"
    assert client(gate).simulate_delete("/v2/apps/x", headers=AUTH).json["method"] == "DELETE"


def test_the_leader_answers_itself_and_v2_leader_names_it(leader: str) -> None:
    gate = LeaderGate(lambda: "127.0.0.1:7", "127.0.0.1:7", TENANTS)
    assert client(gate).simulate_get("/v2/apps", headers=AUTH).status_code == 503  # electing
    local = falcon.App()
    local.add_route("/v2/apps", type("Apps", (), {"on_get": lambda self, req, resp: setattr(
        resp, "media", {"apps": []})})())
    gate.local = local
    assert client(gate).simulate_get("/v2/apps", headers=AUTH).json == {"apps": []}
    assert client(gate).simulate_get("/v2/leader", headers=AUTH).json == {
        "leader": "127.0.0.1:7"}
    assert Leader.seen == []


def test_v2_leader_needs_a_token_and_says_when_there_is_none() -> None:
    gate = LeaderGate(lambda: None, "127.0.0.1:1", TENANTS)
    resp = client(gate).simulate_get("/v2/leader")
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers
    assert client(gate).simulate_get("/v2/leader", headers={
        "Authorization": "Bearer wrong"}).status_code == 401
    resp = client(gate).simulate_get("/v2/leader", headers=AUTH)
    assert (resp.status_code, resp.json["message"]) == (404, "There is no leader")


def test_no_leader_an_unreachable_one_or_a_second_hop_is_503(leader: str) -> None:
    resp = client(LeaderGate(lambda: None, "127.0.0.1:1", TENANTS)).simulate_get(
        "/v2/apps", headers=AUTH)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "no leader" in resp.json["message"]
    resp = client(LeaderGate(lambda: "127.0.0.1:1", "127.0.0.1:2", TENANTS)).simulate_get(
        "/v2/apps", headers=AUTH)
    assert resp.status_code == 503 and "127.0.0.1:1 does not answer" in resp.json["message"]
    # a request another standby forwarded is not forwarded again (leadership is moving)
    resp = client(LeaderGate(lambda: leader, "127.0.0.1:2", TENANTS)).simulate_get(
        "/v2/apps", headers={**AUTH, FORWARDED: "127.0.0.1:3"})
    assert resp.status_code == 503 and Leader.seen == []


@pytest.mark.parametrize("url", ["http://a:1/x", "zk://a:1", "zk://a:1/", "zk://a/x",
                                 "zk://u:p@a:1/x", "zk://a:1,b/x", "zk://a:99999/x"])
def test_bad_zk_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="--zk"):
        parse_zk(url)


def test_zk_urls_and_advertised_addresses() -> None:
    url = parse_zk("zk://10.0.0.1:2181,10.0.0.2:2181/hypervm/")
    assert (url.hosts, url.path) == ("10.0.0.1:2181,10.0.0.2:2181", "/hypervm")
    assert advertised(None, "10.0.0.5", 8080) == "10.0.0.5:8080"
    assert advertised("sched1:8080", "0.0.0.0", 8080) == "sched1:8080"
    with pytest.raises(ConfigError, match="--advertise"):
        advertised(None, "0.0.0.0", 8080)
    with pytest.raises(ConfigError, match="--advertise"):
        advertised("nohost", "127.0.0.1", 8080)


@pytest.mark.parametrize(("args", "message"), [
    (["--zk", "zk://127.0.0.1:1/x", "--state", "sqlite:///tmp/x.db"],
     "with --zk the state lives in ZooKeeper"),
    ([], "give --state sqlite:///PATH.db"),
    (["--zk", "zk://127.0.0.1:1"], "name a znode path"),
    (["--zk", "zk://127.0.0.1:1/x", "--listen", "0.0.0.0:0"], "give --advertise"),
])
def test_ha_options_errors_exit_1(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                  args: list[str], message: str) -> None:
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"tenants": [{
        "id": "a", "token_sha256": hash_token("t"), "quota": {"cpus": 1, "mem": 1,
                                                               "instances": 1}}]}))
    base = {"--master": "127.0.0.1:1", "--listen": "127.0.0.1:0", "--tenants": str(tenants)}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    with caplog.at_level(logging.ERROR):
        assert main([x for kv in base.items() for x in kv]) == 1
    assert message in caplog.text


class FakeTransaction:
    def __init__(self, zk: FakeZk) -> None:
        self.zk, self.ops = zk, []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.ops.append((name, args, kwargs))

    def commit(self) -> list[Any]:
        if self.zk.applies:  # ZooKeeper did it, the answer was lost
            (token,) = [a[1] for name, a, _ in self.ops if name == "set_data"
                        and a[0] == self.zk.root]
            self.zk.data, self.zk.version = token, self.zk.version + 1
        raise ConnectionLoss()


class FakeZk:
    """Just enough of a KazooClient for a commit whose connection drops."""

    def __init__(self, applies: bool) -> None:
        self.applies, self.root = applies, "/x/state"
        self.data, self.version = b"", 0

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self)

    def get(self, path: str) -> tuple[bytes, Any]:
        return self.data, type("Stat", (), {"version": self.version})()


@pytest.mark.parametrize("applied", [True, False])
def test_a_commit_cut_off_by_a_lost_connection_is_read_back(applied: bool) -> None:
    store = ZkStore.__new__(ZkStore)
    Store.__init__(store, ":memory:")
    zk = FakeZk(applied)
    store.zk, store.root, store.fence, store.version = zk, zk.root, "/x/leader/n", 0
    store.retry = lambda fn, *args: fn(*args)
    if applied:
        store._commit([("create", "/x/state/meta/1", b"{}")])
        assert store.version == 1  # the next commit expects ZooKeeper's new version
    else:
        with pytest.raises(StorageUnavailable, match="connection to ZooKeeper was lost"):
            store._commit([("create", "/x/state/meta/1", b"{}")])
        assert store.version == 0


class Streaming(BaseHTTPRequestHandler):
    """An event stream: one event, then the next only when the test says so."""

    go = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"event: one\ndata: {}\n\n")
        self.wfile.flush()
        Streaming.go.wait(10)
        self.wfile.write(b"event: two\ndata: {}\n\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


def test_an_event_stream_is_relayed_as_it_comes() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Streaming)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gate = LeaderGate(lambda: f"127.0.0.1:{server.server_address[1]}", "127.0.0.1:1",
                          TENANTS)
        environ = falcon.testing.create_environ("/v2/events", headers=AUTH)
        started: list[str] = []
        body = iter(gate(environ, lambda status, headers: started.append(status)))
        assert started == ["200 OK"]
        assert next(body) == b"event: one\ndata: {}\n\n"  # before the second one exists
        Streaming.go.set()
        assert b"".join(body) == b"event: two\ndata: {}\n\n"
    finally:
        Streaming.go.set()
        server.shutdown()
        server.server_close()
