"""A real ZooKeeper ensemble on loopback (Debian's ``zookeeper`` package) for the HA tests, and
a Mesos master double registered in it as a real master registers (``json.info_`` nodes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

ZK_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest names its dependencies
ZK_CONF = Path("/etc/zookeeper/conf")  # log4j.properties
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def available() -> bool:
    return ZK_JAR.exists() and shutil.which("java") is not None


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Ensemble:
    """``size`` ZooKeeper servers, each with its own data dir and ports (client, quorum,
    election), started as ``java … QuorumPeerMain zoo.cfg`` as zkServer.sh does."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir, self.size = workdir, size
        ports = _ports(3 * size)
        self.client_ports = ports[:size]
        peers = [f"server.{i + 1}=127.0.0.1:{ports[size + i]}:{ports[2 * size + i]}"
                 for i in range(size)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size
        for i in range(size):
            data = workdir / f"zk{i + 1}"
            data.mkdir(parents=True, exist_ok=True)
            (data / "myid").write_text(f"{i + 1}\n")
            (data / "zoo.cfg").write_text("\n".join([
                "tickTime=500", "initLimit=20", "syncLimit=10", f"dataDir={data}",
                f"clientPort={self.client_ports[i]}", "clientPortAddress=127.0.0.1",
                "admin.enableServer=false", "4lw.commands.whitelist=srvr,ruok",
                "maxSessionTimeout=60000", *peers, ""]))

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def start(self, index: int | None = None, timeout: float = 60.0) -> Ensemble:
        for i in range(self.size) if index is None else [index]:
            data = self.workdir / f"zk{i + 1}"
            with open(data / "server.log", "ab") as log:
                self.processes[i] = subprocess.Popen(
                    ["java", "-Xmx96m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-Xshare:auto", f"-Dzookeeper.log.dir={data}", "-cp",
                     f"{ZK_CONF}:{ZK_JAR}", MAIN, str(data / "zoo.cfg")],
                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_serving(timeout, [i for i in range(self.size) if self.processes[i]])
        return self

    def mode(self, index: int) -> str | None:
        """leader, follower or None (not serving)."""
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.client_ports[index]), timeout=2) as s:
            s.sendall(b"srvr")
            text = b""
            while chunk := s.recv(4096):
                text += chunk
            for line in text.decode(errors="replace").splitlines():
                if line.startswith("Mode: "):
                    return line[6:].strip()
        return None

    def wait_serving(self, timeout: float, indexes: list[int]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            modes = [self.mode(i) for i in indexes]
            if all(m in ("leader", "follower", "standalone") for m in modes):
                return
            time.sleep(0.3)
        raise AssertionError(f"ZooKeeper did not serve: {modes}\n{self.logs()}")

    def stop(self, index: int | None = None) -> None:
        for i in range(self.size) if index is None else [index]:
            proc = self.processes[i]
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            self.processes[i] = None

    def logs(self) -> str:
        return "\n".join((self.workdir / f"zk{i + 1}" / "server.log").read_text(
            errors="replace")[-2000:] for i in range(self.size)
            if (self.workdir / f"zk{i + 1}" / "server.log").exists())


@contextlib.contextmanager
def client_of(ensemble: Ensemble) -> Any:
    """A started kazoo client of ``ensemble``, stopped and closed afterwards."""
    from kazoo.client import KazooClient  # the test extra's kazoo, only where ZooKeeper runs

    client = KazooClient(ensemble.hosts)
    client.start(timeout=20)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def master_info(port: int) -> dict[str, Any]:
    """A ``MasterInfo`` as Mesos 1.11 writes it to ``json.info_*`` (JSON of the protobuf; ``ip``
    is the IPv4 address as a uint32 in network byte order)."""
    return {"id": f"master-double-{port}", "ip": 16777343, "port": port,
            "pid": f"master@127.0.0.1:{port}", "hostname": "localhost", "version": "1.11.0",
            "address": {"hostname": "localhost", "ip": "127.0.0.1", "port": port},
            "capabilities": [{"type": "AGENT_UPDATE"}, {"type": "AGENT_DRAINING"}]}


def register_master(client: Any, path: str, port: int) -> str:
    """Register a master at ``path`` as Mesos' contender does: an ephemeral sequential
    ``json.info_`` node (the lowest leads)."""
    client.ensure_path(path)
    return client.create(f"{path}/json.info_", json.dumps(master_info(port)).encode(),
                         ephemeral=True, sequence=True)
