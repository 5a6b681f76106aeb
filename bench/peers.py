"""Real peers on the same root filesystem: runc (Debian ``runc``) and gVisor (Debian ``runsc``,
ptrace platform: its KVM platform hangs on this host, as stock KVM guests do).

Both run an OCI bundle whose config.json comes from ``runc spec`` (adjusted: no terminal, a
tmpfs on /tmp) and whose root is the benchmark image's erofs layer, loop-mounted read-only
on the host - the very files a HyperVM's container sees. Each runtime keeps its state under a
root directory of its own (``--root``), and every container is named ``hypervm-bench-*``.

- start: exec of ``RUNTIME run`` until the container's first byte (``echo``) on our pipe;
- lifecycle: ``RUNTIME run … true`` from exec to exit (create, start, wait, delete);
- idle memory: PSS and private memory (Private_Clean + Private_Dirty) of every host process
  of an idle sandbox (``sleep``): for runc the container process, for runsc the sentry, the
  gofer and the ptrace stubs, found by the cgroup runsc/runc names after the container;
- workloads timed inside the sandbox by its own clock (/proc/uptime), so start-up is out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/hypervm-bench-peers")
RUNSC_FLAGS = ("--platform=ptrace",)
TIMEOUT = 300.0

#: untar a ~50 MB tree of small files from the image and stat every entry
SYSCALL_SCRIPT = ("cd /tmp && t0=$(cut -d' ' -f1 /proc/uptime) && tar xf /data/tree.tar && "
                  "find tree | xargs stat -c '%s %i' >/dev/null && "
                  "t1=$(cut -d' ' -f1 /proc/uptime) && echo T $t0 $t1")
PIPE_SCRIPT = ("t0=$(cut -d' ' -f1 /proc/uptime) && head -c 50000000 /dev/zero | sha256sum "
               ">/dev/null && t1=$(cut -d' ' -f1 /proc/uptime) && echo T $t0 $t1")
#: serve PARTS files of 1 MiB random bytes with busybox httpd on PORT (host network for
#: runc/runsc). Parts: gVisor's hostinet (Debian's 20221219) stalls a reply once the host
#: socket's send buffer (~4 MB here) fills, then the connection ends short
PART_MIB = 1
SERVE_SCRIPT = ("mkdir -p /tmp/www && for i in $(seq $PARTS); do head -c 1048576 "
                "/dev/urandom > /tmp/www/part$i.bin; done && echo ok > /tmp/www/small && "
                "exec httpd -f -p 127.0.0.1:$PORT -h /tmp/www")
#: the tree SYSCALL_SCRIPT unpacks: DIRS x FILES files of FILE_BYTES
TREE_DIRS, TREE_FILES, TREE_FILE_BYTES = 50, 100, 10_000


def available() -> dict[str, str | None]:
    return {name: shutil.which(name) for name in ("runc", "runsc")}


@dataclass(frozen=True)
class Runtime:
    """One OCI runtime: ``runc`` or ``runsc`` (with the ptrace platform)."""
    name: str
    network: str = "none"

    def argv(self, *args: str) -> list[str]:
        base = [self.name, "--root", str(STATE_DIR / self.name)]
        if self.name == "runsc":
            base += [*RUNSC_FLAGS, f"--network={self.network}"]
        return [*base, *args]


RUNC, RUNSC = Runtime("runc"), Runtime("runsc")


def container_id(kind: str) -> str:
    return f"hypervm-bench-{kind}-{uuid.uuid4().hex[:8]}"


def spec(root: Path, args: Sequence[str], *, host_network: bool = False,
         env: Sequence[str] = ()) -> dict[str, Any]:
    """``runc spec``'s default config, adjusted: ``args`` without a terminal, ``root`` read-only,
    a tmpfs on /tmp, optionally the host's network namespace."""
    (_tmp_cwd() / "config.json").unlink(missing_ok=True)
    subprocess.run(["runc", "spec"], cwd=_tmp_cwd(), capture_output=True, check=True)
    config = json.loads((_tmp_cwd() / "config.json").read_text())
    (_tmp_cwd() / "config.json").unlink()
    process = config["process"]
    process.update(terminal=False, args=list(args), env=[*process["env"], *env])
    config["root"] = {"path": str(root), "readonly": True}
    config["hostname"] = "bench"
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "size=256m"]})
    if host_network:
        config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"]
                                         if n["type"] != "network"]
    return config


@contextlib.contextmanager
def oci_root(lower: Path) -> Iterator[Path]:
    """``lower`` (the image's read-only layer) under an overlay whose upper adds the mount
    points a runtime needs (/proc, /dev, /sys): the root a bundle names, as a HyperVM's
    container gets an overlay over the same layer. The bundle mounts it read-only."""
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-oci-", dir="/var/tmp"))
    upper, scratch, target = work / "upper", work / "work", work / "root"
    for path in (upper, scratch, target):
        path.mkdir()
    for name in ("proc", "dev", "sys", "tmp"):
        (upper / name).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(target)],
                   check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _tmp_cwd() -> Path:
    path = STATE_DIR / "spec"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def bundle(root: Path, args: Sequence[str], **kwargs: Any) -> Iterator[Path]:
    """An OCI bundle directory (config.json only; the root is ``root``, absolute)."""
    path = STATE_DIR / "bundles" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    try:
        (path / "config.json").write_text(json.dumps(spec(root, args, **kwargs)))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-1500:]}")


def run_true(rt: Runtime, bundle_dir: Path) -> float:
    """``RUNTIME run … true``: exec to exit."""
    argv = rt.argv("run", "--bundle", str(bundle_dir), container_id("true"))
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    _check(proc, f"{rt.name} run true")
    return took


def start(rt: Runtime, bundle_dir: Path) -> float:
    """exec of ``RUNTIME run`` until the container's first byte on our pipe (it runs echo)."""
    argv = rt.argv("run", "--bundle", str(bundle_dir), container_id("start"))
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.monotonic() - started
    _, err = proc.communicate(timeout=TIMEOUT)
    if not first or proc.returncode != 0:
        raise RuntimeError(f"{rt.name} run echo failed ({proc.returncode}): {err[-1500:]!r}")
    return took


def inner_seconds(stdout: str) -> float:
    """The T t0 t1 line the workload scripts print: seconds by the sandbox's own clock."""
    for line in stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["T"] and len(fields) == 3:
            return round(float(fields[2]) - float(fields[1]), 3)
    raise RuntimeError(f"no timing line in the workload's output: {stdout[-500:]!r}")


def workload(rt: Runtime, root: Path, script: str) -> float:
    with bundle(root, ("sh", "-c", script)) as b:
        argv = rt.argv("run", "--bundle", str(b), container_id("work"))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)
    _check(proc, f"{rt.name} workload")
    return inner_seconds(proc.stdout)


def _cgroup_pids(cid: str) -> list[int]:
    """Host processes in a cgroup whose path ends with the container id."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(line.endswith("/" + cid) for line in text.splitlines()):
            pids.append(int(entry.name))
    return pids


def rollup(pid: int) -> dict[str, float]:
    """RSS, PSS and private memory (clean + dirty) of ``pid`` in MiB (zeros when it is gone)."""
    out = {"rss": 0.0, "pss": 0.0, "private": 0.0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            out["rss"] += int(rest.split()[0]) / 1024
        elif key == "Pss":
            out["pss"] += int(rest.split()[0]) / 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            out["private"] += int(rest.split()[0]) / 1024
    return out


def idle_memory(rt: Runtime, root: Path, count: int, settle_s: float = 2.0
                ) -> list[dict[str, float]]:
    """PSS and private MiB of each of ``count`` idle sandboxes running at once."""
    ids = [container_id("idle") for _ in range(count)]
    started: list[str] = []
    with bundle(root, ("sleep", "3600")) as b:
        try:
            for cid in ids:
                started.append(cid)
                run_detached(rt, b, cid)
            time.sleep(settle_s)
            out = []
            for cid in ids:
                each = [rollup(pid) for pid in _cgroup_pids(cid)]
                out.append({"pss_mib": round(sum(e["pss"] for e in each), 1),
                            "private_mib": round(sum(e["private"] for e in each), 1),
                            "processes": len(each)})
            return out
        finally:
            for cid in started:
                remove(rt, cid)


def run_detached(rt: Runtime, bundle_dir: Path, cid: str) -> None:
    """``RUNTIME run --detach``: the container keeps the stdio it is given, so it gets
    /dev/null (a pipe would never reach EOF) and a file for the runtime's errors."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(rt.argv("run", "--detach", "--bundle", str(bundle_dir), cid),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                              timeout=TIMEOUT, check=False)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{rt.name} run --detach failed ({proc.returncode}): "
                               f"{err.read()[-1500:]!r}")


def remove(rt: Runtime, cid: str) -> None:
    subprocess.run(rt.argv("kill", cid, "KILL"), capture_output=True, check=False)
    flag = "-force" if rt.name == "runsc" else "-f"
    subprocess.run(rt.argv("delete", flag, cid), capture_output=True, check=False)


def download_mb_s(port: int, parts: int, tries: int = 3) -> float:
    """MiB/s of one curl fetching every part (a connection each), median of ``tries``."""
    rates = []
    for _ in range(tries):
        started = time.monotonic()
        got = subprocess.run(["curl", "-sf", "-w", "%{size_download}\\n", "-o", "/dev/null",
                              f"http://127.0.0.1:{port}/part[1-{parts}].bin"],
                             capture_output=True, text=True, check=True).stdout
        total = sum(int(float(x)) for x in got.split())
        rates.append(total / 1048576 / (time.monotonic() - started))
    return round(sorted(rates)[len(rates) // 2], 1)


def _wait_http(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/small"],
                         check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"httpd on 127.0.0.1:{port} never answered")
        time.sleep(0.2)


def network_mb_s(rt: Runtime, root: Path, size_mb: int) -> float:
    """Download of ``size_mb`` MiB (in 1 MiB files) from busybox httpd in the sandbox over
    127.0.0.1: the host's network namespace for runc, ``--network=host`` for runsc (its
    own netstack publishes no port without a CNI setup)."""
    from bench.network import _free_port

    port = _free_port()
    parts = max(1, size_mb // PART_MIB)
    net_rt = Runtime(rt.name, network="host")
    cid = container_id("net")
    with bundle(root, ("sh", "-c", SERVE_SCRIPT), host_network=True,
                env=(f"PARTS={parts}", f"PORT={port}")) as b:
        try:
            run_detached(net_rt, b, cid)
            _wait_http(port)
            return download_mb_s(port, parts)
        finally:
            remove(net_rt, cid)


def tree_entries() -> list[Any]:
    """busybox + /data/tree.tar (the syscall workload's input, ~50 MB of small files)."""
    import io
    import tarfile

    from tests.integration import imagebuild

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in range(TREE_DIRS):
            for f in range(TREE_FILES):
                info = tarfile.TarInfo(f"tree/d{d}/f{f}")
                info.size = TREE_FILE_BYTES
                tar.addfile(info, io.BytesIO(os.urandom(TREE_FILE_BYTES)))
    return [*imagebuild.busybox_entries(), imagebuild.Entry("data", "dir", mode=0o755),
            imagebuild.Entry("data/tree.tar", data=buf.getvalue())]
