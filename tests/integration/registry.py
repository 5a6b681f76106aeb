"""A real registry for tests: Debian's ``docker-registry`` on a free loopback port.

    with running_registry(tmp_path) as registry:
        registry.host            # "127.0.0.1:PORT" (loopback: hypervm talks plain HTTP to it)
        registry.blob_gets()     # Counter: blob digest -> successful GETs, from the access log
        registry.blob_data(d)    # the stored bytes of a blob (tests corrupt it to inject faults)

``running_registry(dir, {"alice": "pw"})`` requires basic auth; with ``token_auth=True``,
bearer tokens from a test token service (the Docker Hub flow). :func:`fault_proxy` puts a tiny
HTTP proxy in front that answers chosen paths with chosen bytes (e.g. a manifest that is not
JSON) and forwards everything else. All of them stop at teardown.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import http.server
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = "docker-registry"
_ACCESS_RE = re.compile(r'"GET /v2/(?P<name>\S+)/blobs/(?P<digest>sha256:[0-9a-f]{64}) '
                        r'HTTP/[0-9.]+" (?P<status>\d{3})')

_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
_AUTH = """\
auth:
  htpasswd:
    realm: hypervm-test
    path: {path}
"""


_TOKEN_AUTH = """\
auth:
  token:
    realm: http://{realm}/token
    service: hypervm-test-registry
    issuer: hypervm-test-issuer
    rootcertbundle: {cert}
"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker token service (the auth flow of Docker Hub, quay …) for tests: checks basic
    credentials, grants what is asked, signs RS256 JWTs with openssl and a throw-away key."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.users = users
        self.key, self.cert = workdir / "token.key", workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", str(self.key), "-out", str(self.cert),
                        "-subj", "/CN=hypervm-test-token"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.issued = 0

    def sign(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        return signing_input + "." + _b64url(signature)

    def token_for(self, authorization: str | None, scopes: list[str], service: str) -> str | None:
        if not authorization or not authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        if self.users.get(user) != password:
            return None
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            if kind:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        self.issued += 1
        return self.sign({"iss": "hypervm-test-issuer", "sub": user, "aud": service,
                          "exp": now + 300, "nbf": now - 10, "iat": now,
                          "jti": f"t{self.issued}", "access": access})


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server_state: TokenServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        token = self.server_state.token_for(self.headers.get("Authorization"),
                                            query.get("scope", []),
                                            query.get("service", [""])[0])
        body = json.dumps({"token": token, "access_token": token} if token
                          else {"errors": [{"code": "UNAUTHORIZED"}]}).encode()
        self.send_response(200 if token else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def htpasswd_line(user: str, password: str) -> str:
    """``user:bcrypt`` (the registry's htpasswd accepts only bcrypt), through libxcrypt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # removed in Python 3.13: then use the bcrypt package

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str
    storage: Path
    log_path: Path

    def blob_gets(self, name: str | None = None) -> collections.Counter[str]:
        """Successful blob GETs so far (200/206/307), per digest, optionally for one repo."""
        counts: collections.Counter[str] = collections.Counter()
        for match in _ACCESS_RE.finditer(self.log_path.read_text(errors="replace")):
            if match["status"] in ("200", "206", "307") and (name is None or
                                                             match["name"] == name):
                counts[match["digest"]] += 1
        return counts

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest
                / "data")

    def ref(self, name: str, tag: str) -> str:
        return f"{self.host}/{name}:{tag}"


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                return
            raise
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{REGISTRY_BIN} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def running_registry(workdir: Path, users: dict[str, str] | None = None, *,
                     token_auth: bool = False) -> Iterator[Registry]:
    """Start a registry with its own storage and config under ``workdir``; stop it after.
    With ``users`` (name → password) it requires basic auth, or with ``token_auth`` bearer
    tokens from a token service (started here too) that checks those users."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        port = free_port()
        storage = workdir / "storage"
        storage.mkdir(exist_ok=True)
        config = workdir / "registry.yml"
        text = _CONFIG.format(root=storage, port=port)
        if users and token_auth:
            tokens = TokenServer(workdir, users)
            handler = type("Handler", (_TokenHandler,), {"server_state": tokens})
            realm = stack.enter_context(_serve(handler))
            text += _TOKEN_AUTH.format(realm=realm, cert=tokens.cert)
        elif users:
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
            text += _AUTH.format(path=htpasswd)
        config.write_text(text)
        log_path = workdir / "registry.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                                    stderr=log, stdin=subprocess.DEVNULL)
        try:
            _wait_http(f"http://127.0.0.1:{port}/v2/", proc)
            yield Registry(f"127.0.0.1:{port}", storage, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    upstream: str
    overrides: dict[str, tuple[int, str, bytes]]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self, body: bool) -> None:
        override = self.overrides.get(self.path)
        if override is not None:
            status, content_type, data = override
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            self.end_headers()
            if body:
                self.wfile.write(data)
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(self.command, self.path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
        conn.close()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)


@contextlib.contextmanager
def fault_proxy(upstream: str,
                overrides: dict[str, tuple[int, str, bytes]]) -> Iterator[str]:
    """A loopback proxy to ``upstream`` answering ``overrides[path]`` itself; yields host:port."""
    handler = type("Handler", (_ProxyHandler,), {"upstream": upstream, "overrides": overrides})
    with _serve(handler) as address:
        yield address
