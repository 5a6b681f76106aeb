"""``hypervm-scheduler`` run as a real process for tests, and a small client for its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.tenants import hash_token
from tests.mesos.agent import executor_command

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TenantDef:
    id: str
    token: str
    cpus: float = 4.0
    mem: float = 2048.0
    instances: int = 10
    #: may make the leader abdicate (DELETE /v2/leader)
    operator: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SchedulerProcess:
    def __init__(self, workdir: Path, master_url: str, tenants: list[TenantDef],
                 prefix: str = "hypervm-test", extra: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.master_url, self.prefix, self.extra = master_url, prefix, extra or []
        self.tokens = {t.id: t.token for t in tenants}
        self.tenants_file = workdir / "tenants.json"
        self.tenants_file.write_text(json.dumps({"tenants": [
            {"id": t.id, "role": f"tenant-{t.id}", "token_sha256": hash_token(t.token),
             "quota": {"cpus": t.cpus, "mem": t.mem, "instances": t.instances},
             "operator": t.operator}
            for t in tenants]}))
        self.state = workdir / "state.db"
        self.port = free_port()
        self.log = workdir / "scheduler.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "scheduler.cli", "--master", self.master_url,
                "--listen", f"127.0.0.1:{self.port}", "--state", f"sqlite://{self.state}",
                "--tenants", str(self.tenants_file), "--executor-command", executor_command(),
                "--executor-prefix", self.prefix, "--executor-mem", "32",
                "--refuse-seconds", "1", "--debug", *self.extra]

    def start(self, timeout: float = 30.0) -> SchedulerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"hypervm-scheduler exited {self.process.returncode}:\n"
                                     f"{self.log_text()[-4000:]}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/openapi.json")[0] == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"hypervm-scheduler did not serve its API:\n{self.log_text()}")

    def kill(self, signum: int = signal.SIGKILL, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.kill(signal.SIGTERM, timeout=10)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def request(self, method: str, path: str, tenant: str | None = None, body: Any = None,
                raw: bytes | None = None, token: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        token = token or (self.tokens[tenant] if tenant else None)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text.decode(errors="replace")

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.log_text()[-6000:]}")
