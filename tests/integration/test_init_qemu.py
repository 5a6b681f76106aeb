"""The guest init, black-box: boot QEMU directly (TCG, qboot, PVH) with the HyperKernel, an initrd
holding only our init, one erofs busybox layer and a 9p share, and speak init/PROTOCOL.md on the
virtio-serial channel.

No libvirt here: this checks init alone. Every QEMU process is killed at teardown whatever
happens, and the console log of a failed test is printed. Skipped only when no HyperKernel has
been built yet (``make kernel``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import Frame, FrameDecoder, MsgType, encode, encode_json

pytestmark = [pytest.mark.vm, pytest.mark.slow]

INIT_DIR = Path(__file__).resolve().parents[2] / "init"
QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
BUSYBOX = Path("/bin/busybox")
LAYER = "layer0"
UPPER_LAYER = "layer1"
SHARE_TAG = "share0"
BOOT_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0
RECONNECT_PAUSE = 0.1


@pytest.fixture(scope="module")
def kernel() -> Any:
    from hypervm.config import config_from_env
    from hypervm.errors import HostError
    from vmimage.kernel import find_kernel

    try:
        found = find_kernel(config_from_env(), env={"HYPERVM_KERNEL": "hyperkernel"})
    except HostError as e:
        pytest.skip(f"no HyperKernel built yet ({e}): run make kernel")
    if found.kind != "hyperkernel":
        pytest.skip("no HyperKernel built yet: run make kernel")
    return found


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, kernel: Any) -> dict[str, Path]:
    for tool in (QEMU, "cpio", "mkfs.erofs", "make"):
        assert shutil.which(tool), f"{tool} is required (make deps installs it)"
    assert QBOOT.exists() and BUSYBOX.exists()
    work = tmp_path_factory.mktemp("init-qemu")
    build = work / "build"
    made = subprocess.run(
        ["make", "-C", str(INIT_DIR), f"BUILD={build}"], capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stdout + made.stderr
    # initrd: our init and nothing else; a second one also carries a bogus kernel module
    initrd = _cpio(work / "initrd", {"init": build / "hypervm-init"}, work / "initrd.cpio")
    bogus = work / "bogus.ko"
    bogus.write_bytes(b"not an ELF module")
    order = work / "hypervm.order"
    order.write_text("# load order\n/lib/modules/bogus.ko\nmissing.ko\n")
    initrd_modules = _cpio(
        work / "initrd-modules",
        {
            "init": build / "hypervm-init",
            "lib/modules/bogus.ko": bogus,
            "lib/modules/extra/unlisted.ko": bogus,
            "lib/modules/hypervm.order": order,
        },
        work / "initrd-modules.cpio",
    )
    # the layer: busybox, its applets, a file that is not executable
    root = work / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "bin/notexec").write_text("#!/bin/sh\necho should not run\n")
    (root / "bin/notexec").chmod(0o644)
    (root / "bin/badformat").write_bytes(b"\x00\x01 not a program")
    (root / "bin/badformat").chmod(0o755)
    (root / "etc/image-marker").write_text("from the layer\n")
    layer = work / "layer.erofs"
    subprocess.run(
        ["mkfs.erofs", "--quiet", str(layer), str(root)], check=True, capture_output=True
    )
    # an upper layer: overrides a file of the lower one, adds one
    upper = work / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/image-marker").write_text("from the upper layer\n")
    (upper / "etc/only-upper").write_text("upper\n")
    # not Docker's init layer's 0755 root:root: the merged /etc must keep the image's
    os.chown(upper / "etc", 0, 42)
    (upper / "etc").chmod(0o751)
    upper_layer = work / "upper.erofs"
    subprocess.run(
        ["mkfs.erofs", "--quiet", str(upper_layer), str(upper)], check=True, capture_output=True
    )
    share = work / "share"
    share.mkdir()
    (share / "from-host").write_text("host data\n")
    return {
        "initrd": initrd,
        "initrd_modules": initrd_modules,
        "layer": layer,
        "upper_layer": upper_layer,
        "share": share,
        "work": work,
    }


def _cpio(directory: Path, files: dict[str, Path], dest: Path) -> Path:
    """A newc cpio of ``files`` (path in the archive -> source file), as the kernel wants."""
    for name, source in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, directory / name)
    listing = subprocess.run(["find", "."], cwd=directory, capture_output=True, check=True).stdout
    with dest.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=directory,
            input=listing,
            stdout=out,
            check=True,
        )
    return dest


@dataclass
class Process:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit: dict[str, Any] | None = None


class Channel:
    """One host connection to the guest's channel socket; frames via executor.guest.protocol."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.procs: dict[int, Process] = {}
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_some(self, deadline: float) -> bool:
        """Receive and sort what arrives before the deadline; False on timeout or EOF."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            return False
        for frame in self.decoder.feed(data):
            if frame.type in (MsgType.STDOUT, MsgType.STDERR, MsgType.EXIT):
                proc = self.procs.setdefault(frame.id, Process())
                assert proc.exit is None, f"frame {frame.type.name} after EXIT of {frame.id}"
                if frame.type == MsgType.STDOUT:
                    proc.stdout += frame.payload
                elif frame.type == MsgType.STDERR:
                    proc.stderr += frame.payload
                else:
                    proc.exit = frame.json()
            else:
                self.frames.append(frame)
        return True

    def next_frame(self, timeout: float = REPLY_TIMEOUT) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if not self._read_some(deadline) and time.monotonic() >= deadline:
                raise TimeoutError("no frame from the guest")
        return self.frames.pop(0)

    def request(self, type_: MsgType, payload: dict[str, Any]) -> Frame:
        rid = self.next_id
        self.next_id += 1
        self.send_raw(encode_json(type_, rid, payload))
        reply = self.next_frame()
        assert reply.id == rid, f"reply {reply} does not answer request {rid}"
        assert reply.type in (MsgType.OK, MsgType.ERROR)
        return reply

    def ok(self, type_: MsgType, payload: dict[str, Any]) -> dict[str, Any]:
        reply = self.request(type_, payload)
        assert reply.type == MsgType.OK, reply.json()
        return reply.json()

    def error(self, type_: MsgType, payload: dict[str, Any]) -> dict[str, Any]:
        reply = self.request(type_, payload)
        assert reply.type == MsgType.ERROR, reply.json()
        return reply.json()

    def wait_exit(self, handle: int, timeout: float = REPLY_TIMEOUT) -> Process:
        deadline = time.monotonic() + timeout
        while (proc := self.procs.get(handle)) is None or proc.exit is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {handle} did not exit")
            self._read_some(deadline)
        return proc

    def wait_output(self, handle: int, text: bytes, timeout: float = REPLY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.procs.setdefault(handle, Process()).stdout:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {handle} did not print {text!r}")
            self._read_some(deadline)


class Guest:
    """A QEMU process running our init; ``chan`` is the current host connection."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, console: Path) -> None:
        self.proc, self.sock, self.console_path = proc, sock, console
        self.chan: Channel | None = None
        self.ready: dict[str, Any] = {}

    def console(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    def connect(self) -> Channel:
        """(Re)connect and wait for READY, following PROTOCOL.md "Transport" on reconnects."""
        first = self.chan is None
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        for attempt in range(1, 6):
            if not first:
                time.sleep(RECONNECT_PAUSE * attempt)
            chan = Channel(self.sock)
            try:
                ready = chan.next_frame(BOOT_TIMEOUT if first else 1.0)
            except TimeoutError:
                chan.close()
                if first:
                    raise
                continue
            assert ready.type == MsgType.READY and ready.id == 0, ready
            self.chan, self.ready = chan, ready.json()
            return chan
        raise TimeoutError("no READY after reconnecting")

    def kill(self) -> None:
        if self.chan is not None:
            self.chan.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def guests(
    request: pytest.FixtureRequest, artifacts: dict[str, Path], kernel: Any
) -> Iterator[Any]:
    """A factory booting guests; every one is killed at teardown, its console shown on failure."""
    booted: list[Guest] = []

    def boot(name: str, initrd: str = "initrd", append: str = "",
             extra: Sequence[str] = ()) -> Guest:
        work = artifacts["work"]
        sock, console = work / f"{name}.sock", work / f"{name}.console"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        argv = [
            QEMU,
            "-M",
            "pc",
            "-accel",
            "tcg",
            "-bios",
            str(QBOOT),
            "-m",
            "256",
            "-smp",
            "1",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            f"file:{console}",
            "-kernel",
            str(kernel.path),
            "-initrd",
            str(artifacts[initrd]),
            "-append",
            f"console=ttyS0 panic=-1 reboot=t quiet {append}".strip(),
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=ch0,path={sock},server=on,wait=off",
            "-device",
            "virtserialport,chardev=ch0,name=org.hypervm.channel.0",
            "-drive",
            f"file={artifacts['layer']},if=none,id=d0,format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive=d0,serial={LAYER}",
            "-drive",
            f"file={artifacts['upper_layer']},if=none,id=d1,format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive=d1,serial={UPPER_LAYER}",
            "-fsdev",
            f"local,id=fs0,path={artifacts['share']},security_model=none",
            "-device",
            f"virtio-9p-pci,fsdev=fs0,mount_tag={SHARE_TAG}",
            *extra,
        ]
        guest = Guest(
            subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            ),
            sock,
            console,
        )
        booted.append(guest)
        guest.connect()
        return guest

    yield boot
    for guest in booted:
        guest.kill()


@pytest.fixture(scope="module")
def guest(guests: Any) -> Guest:
    return guests("main")


@pytest.fixture(autouse=True)
def _console_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "guest" in request.fixturenames:
        g = request.getfixturevalue("guest")
        print("---- guest console ----\n" + g.console()[-6000:])


def start(chan: Channel, name: str, handle: int, script: str, **process: Any) -> dict[str, Any]:
    payload = {
        "container": name,
        "handle": handle,
        "rootfs": {"layers": [LAYER]},
        "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"], **process},
    }
    return chan.ok(MsgType.START, payload)


def test_ready_names_protocol_and_guest_kernel(guest: Guest, kernel: Any) -> None:
    assert guest.ready["version"] == 1
    assert guest.ready["kernel"] == kernel.version
    assert guest.ready["init"]
    assert "hypervm-init: started (protocol 1)" in guest.console()
    assert guest.chan is not None
    assert guest.chan.ok(MsgType.PING, {}) == {}


def test_an_exec_keeps_its_status_when_its_output_outlives_its_shim(guest: Guest) -> None:
    """init 0.7.6 reads a process's status from its shim's pipe; the shim is reaped later. An
    EXEC whose background child holds its stdout past that reap is still reported with its own
    status, not the shim's (0)."""
    chan = guest.chan
    assert chan is not None
    start(chan, "holder", 460, "echo up; exec sleep 1000")
    chan.wait_output(460, b"up\n")
    chan.ok(MsgType.EXEC, {"container": "holder", "handle": 461, "process": {
        "args": ["sh", "-c", "sleep 1 & echo bg; exit 3"], "env": ["PATH=/bin"]}})
    proc = chan.wait_exit(461)
    assert bytes(proc.stdout) == b"bg\n"
    assert proc.exit == {"status": 3, "signal": None}
    chan.ok(MsgType.SIGNAL, {"handle": 460, "signal": 9})
    chan.wait_exit(460)


def test_stdout_stderr_separate_and_exit_status(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    reply = start(chan, "status", 10, "echo out; echo err >&2; echo more; exit 3")
    assert reply["pid"] > 1
    proc = chan.wait_exit(10)
    assert bytes(proc.stdout) == b"out\nmore\n"
    assert bytes(proc.stderr) == b"err\n"
    assert proc.exit == {"status": 3, "signal": None}


def test_large_output_is_drained_before_exit(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    # 3 MiB: more than a pipe and more than one frame, printed by a process that exits at once
    start(chan, "bulk", 11, "head -c 3145728 /dev/zero | tr '\\0' x")
    proc = chan.wait_exit(11, timeout=120)
    assert proc.exit == {"status": 0, "signal": None}
    assert len(proc.stdout) == 3 * 1024 * 1024 and set(proc.stdout) == {ord("x")}


def test_identity_cwd_env_hostname(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(
        chan,
        "ident",
        12,
        'id; pwd; echo "$FOO"; hostname; cat /etc/image-marker',
        env=["PATH=/bin", "FOO=bar baz"],
        cwd="/tmp",
        uid=1000,
        gid=1001,
        additional_gids=[10, 20],
    )
    proc = chan.wait_exit(12)
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("uid=1000 gid=1001 groups="), lines
    assert "10" in lines[0] and "20" in lines[0]
    assert lines[1:] == ["/tmp", "bar baz", "ident", "from the layer"]
    assert proc.exit == {"status": 0, "signal": None}


def test_signal_kills_main_process_through_the_reaper(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "sleeper", 13, "echo up; exec sleep 1000")
    chan.wait_output(13, b"up\n")
    assert chan.ok(MsgType.SIGNAL, {"handle": 13, "signal": 15}) == {}
    assert chan.wait_exit(13).exit == {"status": None, "signal": 15}
    # a trap in the process proves the signal reached it (forwarded, not the reaper dying)
    start(
        chan,
        "trapper",
        14,
        "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 0.1; done",
    )
    chan.wait_output(14, b"up\n")
    chan.ok(MsgType.SIGNAL, {"handle": 14, "signal": 15})
    proc = chan.wait_exit(14)
    assert b"got-term" in proc.stdout and proc.exit == {"status": 7, "signal": None}
    start(chan, "killed", 15, "echo up; exec sleep 1000")
    chan.wait_output(15, b"up\n")
    chan.ok(MsgType.SIGNAL, {"handle": 15, "signal": 9})
    assert chan.wait_exit(15).exit == {"status": None, "signal": 9}
    err = chan.error(MsgType.SIGNAL, {"handle": 15, "signal": 9})
    assert err["code"] == "ESRCH"


def test_a_tty_process_gets_a_terminal_its_size_and_eof(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "tty", 140, "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo is-tty; echo to-err >&2; "
                           "read go; stty size; cat; echo after-eof", tty=True, stdin=True)
    chan.wait_output(140, b"to-err")
    assert chan.ok(MsgType.RESIZE, {"handle": 140, "rows": 33, "cols": 111}) == {}
    chan.send_raw(encode(MsgType.STDIN, 140, b"go\n"))
    chan.wait_output(140, b"33 111\r\n")
    chan.send_raw(encode(MsgType.STDIN, 140, b"typed\n"))
    chan.wait_output(140, b"typed\r\n")
    chan.send_raw(encode(MsgType.STDIN, 140, b""))  # a terminal's EOF: ^D ends cat
    proc = chan.wait_exit(140)
    assert proc.exit == {"status": 0, "signal": None}
    assert b"is-tty\r\nto-err\r\n" in proc.stdout and proc.stdout.endswith(b"after-eof\r\n")
    assert bytes(proc.stderr) == b""  # one terminal: everything comes as STDOUT

    start(chan, "notty", 141, "echo up; exec sleep 1000")
    chan.wait_output(141, b"up\n")
    assert chan.error(MsgType.RESIZE, {"handle": 141, "rows": 24, "cols": 80})["code"] == "EINVAL"
    assert chan.error(MsgType.RESIZE, {"handle": 141, "rows": 0, "cols": 80})["code"] == "EINVAL"
    assert chan.error(MsgType.RESIZE, {"handle": 99, "rows": 24, "cols": 80})["code"] == "ESRCH"
    chan.ok(MsgType.SIGNAL, {"handle": 141, "signal": 9})
    assert chan.wait_exit(141).exit == {"status": None, "signal": 9}


def test_containers_are_isolated_but_share_the_network(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    show = (
        "for n in net mnt pid; do readlink /proc/self/ns/$n; done; "
        "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort | tr '\\n' ,; echo"
    )
    start(chan, "alpha", 20, f"echo secret > /written-by-alpha; {show}; echo up; exec sleep 1000")
    chan.wait_output(20, b"up\n")
    start(chan, "beta", 21, f"{show}; test -e /written-by-alpha && echo present || echo absent")
    beta = chan.wait_exit(21)
    assert beta.exit == {"status": 0, "signal": None}
    a_net, a_mnt, a_pid, a_ifs, _ = chan.procs[20].stdout.decode().splitlines()
    b_net, b_mnt, b_pid, b_ifs, b_file = beta.stdout.decode().splitlines()
    assert a_net == b_net and a_net.startswith("net:[")
    assert a_mnt != b_mnt and a_pid != b_pid
    assert a_ifs == b_ifs and "lo" in a_ifs.split(",")
    assert b_file == "absent"
    # EXEC joins alpha: same files, same PID namespace (its main process is PID 2 there,
    # under the reaper as PID 1)
    reply = chan.ok(
        MsgType.EXEC,
        {
            "container": "alpha",
            "handle": 22,
            "process": {
                "args": [
                    "sh",
                    "-c",
                    "cat /written-by-alpha; readlink /proc/self/ns/pid; cat /proc/1/comm; hostname",
                ],
                "env": ["PATH=/bin"],
            },
        },
    )
    assert reply["pid"] > 1
    exec_proc = chan.wait_exit(22)
    assert exec_proc.stdout.decode().splitlines() == ["secret", a_pid, "hypervm-shim", "alpha"]
    assert exec_proc.exit == {"status": 0, "signal": None}
    # EXEC with stdin fed by STDIN frames, closed by an empty one
    chan.ok(
        MsgType.EXEC,
        {
            "container": "alpha",
            "handle": 23,
            "process": {"args": ["cat"], "env": ["PATH=/bin"], "stdin": True},
        },
    )
    chan.send_raw(encode(MsgType.STDIN, 23, b"hello "))
    chan.send_raw(encode(MsgType.STDIN, 23, b"stdin"))
    chan.send_raw(encode(MsgType.STDIN, 23, b""))
    cat = chan.wait_exit(23)
    assert bytes(cat.stdout) == b"hello stdin" and cat.exit == {"status": 0, "signal": None}
    # SIGNAL reaches an EXEC'd process; the ones left die with the container's main process
    for handle in (27, 28):
        chan.ok(
            MsgType.EXEC,
            {
                "container": "alpha",
                "handle": handle,
                "process": {"args": ["sh", "-c", "echo up; exec sleep 1000"], "env": ["PATH=/bin"]},
            },
        )
        chan.wait_output(handle, b"up\n")
    chan.ok(MsgType.SIGNAL, {"handle": 27, "signal": 2})
    assert chan.wait_exit(27).exit == {"status": None, "signal": 2}
    chan.ok(MsgType.SIGNAL, {"handle": 20, "signal": 15})
    assert chan.wait_exit(20).exit == {"status": None, "signal": 15}
    assert chan.wait_exit(28).exit == {"status": None, "signal": 9}
    assert (
        chan.error(
            MsgType.EXEC, {"container": "alpha", "handle": 24, "process": {"args": ["true"]}}
        )["code"]
        == "ENOCONT"
    )


def test_loopback_is_up_and_shared_between_containers(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "server", 25, "echo listening; nc -l -p 7777")
    chan.wait_output(25, b"listening\n")
    start(
        chan,
        "client",
        26,
        "for i in $(seq 50); do echo hello-over-lo | nc -w 2 127.0.0.1 7777 && exit 0; "
        "sleep 0.1; done; exit 1",
    )
    assert chan.wait_exit(26).exit == {"status": 0, "signal": None}
    server = chan.wait_exit(25)
    assert b"hello-over-lo" in server.stdout, server


def test_exec_failures_are_reported_without_exit(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    base = {"rootfs": {"layers": [LAYER]}}
    err = chan.error(
        MsgType.START,
        {**base, "container": "nocmd", "handle": 30, "process": {"args": ["no-such-command"]}},
    )
    assert err["code"] == "ENOENT" and "no-such-command" in err["message"]
    err = chan.error(
        MsgType.START,
        {**base, "container": "noexec", "handle": 31, "process": {"args": ["/bin/notexec"]}},
    )
    assert err["code"] == "EACCES"
    err = chan.error(
        MsgType.START,
        {**base, "container": "badformat", "handle": 35, "process": {"args": ["badformat"]}},
    )
    assert err["code"] == "EACCES" and err["errno"] == 8  # ENOEXEC
    err = chan.error(
        MsgType.START,
        {
            **base,
            "container": "nodisk",
            "handle": 32,
            "rootfs": {"layers": ["missing"]},
            "process": {"args": ["true"]},
        },
    )
    assert err["code"] == "ENODEV"
    err = chan.error(
        MsgType.START,
        {
            **base,
            "container": "badcwd",
            "handle": 33,
            "process": {"args": ["true"], "cwd": "/nonexistent"},
        },
    )
    assert err["code"] == "ESPAWN" and "process.cwd" in err["message"]
    err = chan.error(MsgType.START, {**base, "container": "x", "handle": 34, "process": {}})
    assert err["code"] == "EINVAL" and err["message"].startswith("process.args")
    # a failed name and handle are free again; no EXIT was sent for any of them
    start(chan, "nocmd", 30, "exit 0")
    assert chan.wait_exit(30).exit == {"status": 0, "signal": None}
    assert all(h not in chan.procs for h in (31, 32, 33, 34, 35))


def test_early_reply_still_reports_exec_failures(guest: Guest) -> None:
    """START ``early_reply`` (issue 18): OK once only the execve is left. A command not found
    or not executable still gets its ERROR (ENOENT: 127, EACCES: 126 on the host) and no
    EXIT; an execve that fails after the OK (exec format error) ends the process with 126 and
    a line on its stderr; a good one runs as before."""
    chan = guest.chan
    assert chan is not None
    base = {"rootfs": {"layers": [LAYER]}, "early_reply": True}

    def start_early(name: str, handle: int, **process: Any) -> dict[str, Any]:
        return {**base, "container": name, "handle": handle,
                "process": {"env": ["PATH=/bin"], **process}}

    err = chan.error(MsgType.START, start_early("e-nocmd", 130, args=["no-such-command"]))
    assert err["code"] == "ENOENT" and "no-such-command" in err["message"]
    err = chan.error(MsgType.START, start_early("e-noexec", 131, args=["/bin/notexec"]))
    assert err["code"] == "EACCES"
    err = chan.error(MsgType.START, start_early("e-dir", 132, args=["/bin"]))
    assert err["code"] == "EACCES"
    err = chan.error(MsgType.START, start_early("e-cwd", 133, args=["true"], cwd="/nonexistent"))
    assert err["code"] == "ESPAWN" and "process.cwd" in err["message"]
    assert all(h not in chan.procs for h in (130, 131, 132, 133))
    reply = chan.ok(MsgType.START, start_early("e-badformat", 134, args=["badformat"]))
    assert reply["pid"] > 1
    proc = chan.wait_exit(134)
    assert proc.exit == {"status": 126, "signal": None}
    assert b"cannot execute badformat" in proc.stderr, proc.stderr
    reply = chan.ok(MsgType.START, start_early("e-ok", 135, args=["sh", "-c", "echo up; exit 3"]))
    assert reply["pid"] > 1
    proc = chan.wait_exit(135)
    assert proc.exit == {"status": 3, "signal": None} and proc.stdout == b"up\n"
    # confined before the reply, as without it (test_init_confine)
    chan.ok(MsgType.START, start_early("e-confined", 136, uid=1000, gid=1000, args=[
        "sh", "-c", "id -u; grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status"]))
    proc = chan.wait_exit(136)
    assert proc.exit == {"status": 0, "signal": None}, proc.stderr
    assert proc.stdout.decode().split() == ["1000", "CapEff:", "0000000000000000",
                                            "CapBnd:", "00000000a80425fb", "Seccomp:", "2"]


def test_duplicate_names_and_handles_are_refused(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "dup", 40, "echo up; exec sleep 1000")
    chan.wait_output(40, b"up\n")
    payload = {
        "container": "dup",
        "handle": 41,
        "rootfs": {"layers": [LAYER]},
        "process": {"args": ["true"]},
    }
    assert chan.error(MsgType.START, payload)["code"] == "EEXIST"
    assert (
        chan.error(MsgType.START, {**payload, "container": "dup2", "handle": 40})["code"]
        == "EEXIST"
    )
    chan.ok(MsgType.SIGNAL, {"handle": 40, "signal": 9})
    chan.wait_exit(40)


def test_mounts_9p_tmpfs_and_readonly_rootfs(guest: Guest, artifacts: dict[str, Path]) -> None:
    chan = guest.chan
    assert chan is not None
    chan.ok(
        MsgType.START,
        {
            "container": "mounts",
            "handle": 50,
            "rootfs": {"layers": [LAYER], "readonly": True},
            "mounts": [
                {"type": "9p", "source": SHARE_TAG, "destination": "/mnt"},
                {"type": "tmpfs", "destination": "/tmp"},
            ],
            "process": {
                "args": [
                    "sh",
                    "-c",
                    "cat /mnt/from-host; echo guest > /mnt/from-guest; "
                    "echo t > /tmp/t && cat /tmp/t; touch /rootfile || echo ro; "
                    "test -e /sys/fs/cgroup/cgroup.controllers && echo cgroup; "
                    "touch /sys/x || echo sys-ro",
                ],
                "env": ["PATH=/bin"],
            },
        },
    )
    proc = chan.wait_exit(50)
    assert proc.stdout.decode().splitlines() == ["host data", "t", "ro", "cgroup", "sys-ro"], proc
    assert (artifacts["share"] / "from-guest").read_text() == "guest\n"


def test_layers_stack_lowest_first(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    script = "cat /etc/image-marker /etc/only-upper; echo x > /etc/new && echo writable"
    for handle, readonly, last in ((80, False, "writable"), (81, True, None)):
        chan.ok(
            MsgType.START,
            {
                "container": f"stack{handle}",
                "handle": handle,
                "rootfs": {"layers": [LAYER, UPPER_LAYER], "readonly": readonly},
                "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"]},
            },
        )
        lines = chan.wait_exit(handle).stdout.decode().splitlines()
        assert lines[:2] == ["from the upper layer", "upper"]
        assert lines[2:] == ([last] if last else [])


def test_a_prepared_container_takes_the_matching_start(
    guests: Any, artifacts: dict[str, Path]
) -> None:
    """PREPARE makes a container ahead of time, its process forked; only a START of its rootfs
    and carried tags takes it over, with its own mounts, hostname, /etc files, identity,
    environment and confinement."""
    g = guests("prepared")
    chan = g.connect()
    chan.ok(MsgType.NETWORK, {"nameservers": ["10.0.2.3"],
                              "hosts": [{"address": "10.0.2.15", "names": ["prep"]}]})
    (artifacts["share"] / "sub").mkdir(exist_ok=True)
    (artifacts["share"] / "sub" / "in-sub").write_text("sub data\n")
    (artifacts["share"] / "w").mkdir(exist_ok=True)
    (artifacts["share"] / "w").chmod(0o777)  # the process runs as uid 1000
    rootfs = {"layers": [LAYER, UPPER_LAYER], "readonly": False}
    assert chan.ok(MsgType.PREPARE, {"rootfs": rootfs, "shares": [SHARE_TAG]}) == {}
    assert chan.error(MsgType.PREPARE, {"rootfs": rootfs})["code"] == "EEXIST"
    bad = chan.error(MsgType.PREPARE, {"rootfs": rootfs, "shares": ["a b"]})
    assert bad["code"] == "EINVAL" and "shares[0]" in bad["message"]
    # another rootfs starts the usual way; the prepared container keeps waiting
    start(chan, "other", 90, "cat /etc/image-marker")
    assert chan.wait_exit(90).stdout == b"from the layer\n"
    assert "container other started: process 90" in g.console()
    assert "container other started (prepared)" not in g.console()
    script = (
        "hostname; cat /etc/hostname; grep prep /etc/hosts; cat /etc/resolv.conf; "
        "cat /etc/only-upper /ro/in-sub; echo prepared > /rw/from-prepared; "
        "touch /ro/x 2>/dev/null || echo ro; ls -a / | grep -c hypervm-shares; "
        'grep -c hypervm-shares /proc/self/mountinfo; id -u; pwd; echo "$FOO"; cat; '
        "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status"
    )
    reply = chan.ok(MsgType.START, {
        "container": "prep", "handle": 91, "rootfs": rootfs, "hostname": "prep",
        "mounts": [{"type": "9p", "source": SHARE_TAG, "subdir": "w", "destination": "/rw"},
                   {"type": "9p", "source": SHARE_TAG, "subdir": "sub", "destination": "/ro",
                    "readonly": True},
                   {"type": "tmpfs", "destination": "/tmp"}],
        "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin", "FOO=foo"],
                    "cwd": "/tmp", "uid": 1000, "gid": 1000, "stdin": True}})
    chan.send_raw(encode(MsgType.STDIN, 91, b"from stdin\n") + encode(MsgType.STDIN, 91, b""))
    proc = chan.wait_exit(91)
    assert proc.exit == {"status": 0, "signal": None}, (proc.stdout, proc.stderr)
    assert proc.stdout.decode().splitlines() == [
        "prep", "prep", "10.0.2.15\tprep", "nameserver 10.0.2.3", "upper", "sub data", "ro",
        "0", "0", "1000", "/tmp", "foo", "from stdin",
        # confined as unprepared (its bounding set was dropped at PREPARE)
        "CapEff:\t0000000000000000", "CapBnd:\t00000000a80425fb", "Seccomp:\t2"], proc.stdout
    assert (artifacts["share"] / "w" / "from-prepared").read_text() == "prepared\n"
    assert "container prep started (prepared): process 91" in g.console()
    # its process was forked when the container was prepared (the fork is off the START's clock)
    assert f"prepared container: process {reply['pid']} waits for its START" in g.console()
    # used up: a new one can be prepared; a START it cannot serve (a missing subdir) fails
    # cleanly and uses it up too
    chan.ok(MsgType.PREPARE, {"rootfs": rootfs, "shares": [SHARE_TAG]})
    err = chan.error(MsgType.START, {
        "container": "nosub", "handle": 92, "rootfs": rootfs,
        "mounts": [{"type": "9p", "source": SHARE_TAG, "subdir": "nope", "destination": "/x"}],
        "process": {"args": ["true"]}})
    assert err["code"] == "EMOUNT" and "mounts[0]" in err["message"], err
    chan.ok(MsgType.PREPARE, {"rootfs": rootfs})
    # a command its forked process cannot find fails the START as it would unprepared (its
    # reaper ends with it), and uses it up
    for early in (True, False):
        err = chan.error(MsgType.START, {
            "container": f"nocmd{early}", "handle": 93 + early, "rootfs": rootfs,
            "process": {"args": ["no-such-command"], "env": ["PATH=/bin"]},
            "early_reply": early})
        assert err["code"] == "ENOENT", err
        chan.ok(MsgType.PREPARE, {"rootfs": rootfs})
    start(chan, "after", 95, "echo after")
    assert chan.wait_exit(95).stdout == b"after\n"
    chan.ok(MsgType.PING, {})


def test_garbage_gives_error_then_reconnect_gives_ready(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "survivor", 60, "echo up; exec sleep 1000")
    chan.wait_output(60, b"up\n")
    # unknown type with a sound header: ETYPE with the frame's id, payload skipped, channel on
    chan.send_raw(encode(MsgType.PING, 99, b"{}")[:4] + b"\x00\x7f\x00\x00\x00\x00\x00\x63{}")
    err = chan.next_frame()
    assert err.type == MsgType.ERROR and err.id == 99 and err.json()["code"] == "ETYPE"
    assert chan.ok(MsgType.PING, {}) == {}
    # malformed JSON in a sound frame: EINVAL with its id, channel on
    chan.send_raw(encode(MsgType.START, 98, b'{"container": '))
    err = chan.next_frame()
    assert err.id == 98 and err.json()["code"] == "EINVAL"
    # garbage: ERROR id 0 EPROTO, then everything is discarded until we reconnect
    chan.send_raw(b"\xff" * 16 + os.urandom(4096))
    err = chan.next_frame()
    assert err.type == MsgType.ERROR and err.id == 0 and err.json()["code"] == "EPROTO"
    chan.send_raw(encode_json(MsgType.PING, 97, {}))
    with pytest.raises(TimeoutError):
        chan.next_frame(timeout=2)
    chan = guest.connect()
    assert guest.ready["version"] == 1
    assert chan.ok(MsgType.PING, {}) == {}
    # the running container was not affected
    chan.ok(
        MsgType.EXEC,
        {
            "container": "survivor",
            "handle": 61,
            "process": {"args": ["echo", "still here"], "env": ["PATH=/bin"]},
        },
    )
    assert bytes(chan.wait_exit(61).stdout) == b"still here\n"
    chan.ok(MsgType.SIGNAL, {"handle": 60, "signal": 9})
    assert chan.wait_exit(60).exit == {"status": None, "signal": 9}
    assert "hypervm-init: protocol error" in guest.console()


def _mutated_requests(rng: random.Random, count: int) -> Iterator[tuple[MsgType, bytes]]:
    values: list[Any] = [None, True, 0, -1, 2**32, 1.5, "", "..", "/", "x" * 300, [], {}, ["a"]]
    seeds: list[tuple[MsgType, dict[str, Any]]] = [
        (
            MsgType.START,
            {
                "container": "fz",
                "handle": 900,
                "rootfs": {"layers": [LAYER]},
                "process": {"args": ["true"], "env": ["PATH=/bin"]},
            },
        ),
        (MsgType.EXEC, {"container": "fz", "handle": 901, "process": {"args": ["true"]}}),
        (MsgType.SIGNAL, {"handle": 900, "signal": 15}),
        (MsgType.PING, {}),
    ]
    for i in range(count):
        type_, seed = rng.choice(seeds)
        obj = json.loads(json.dumps(seed))
        node = obj
        while isinstance(node, dict) and node and rng.random() < 0.6:
            key = rng.choice(list(node))
            if rng.random() < 0.5 or not isinstance(node[key], dict):
                node[key] = rng.choice(values)
                break
            node = node[key]
        if "handle" in obj and isinstance(obj["handle"], int) and type_ != MsgType.SIGNAL:
            obj["handle"] = 1000 + i  # a valid START/EXEC really runs `true`
        text = bytearray(json.dumps(obj).encode())
        for _ in range(rng.randrange(3) if rng.random() < 0.3 else 0):
            if text:
                text[rng.randrange(len(text))] = rng.randrange(256)
        yield type_, bytes(text)


def test_random_requests_each_get_exactly_one_reply(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    rng = random.Random(1234)
    verdicts: dict[str, int] = {}
    for type_, payload in _mutated_requests(rng, 300):
        rid = chan.next_id
        chan.next_id += 1
        chan.send_raw(encode(type_, rid, payload))
        reply = chan.next_frame()
        assert reply.id == rid and reply.type in (MsgType.OK, MsgType.ERROR), (reply, payload)
        code = "OK" if reply.type == MsgType.OK else reply.json()["code"]
        verdicts[code] = verdicts.get(code, 0) + 1
    assert verdicts.get("OK", 0) > 10 and verdicts.get("EINVAL", 0) > 10, verdicts
    assert chan.ok(MsgType.PING, {}) == {}
    with pytest.raises(TimeoutError):  # no stray second reply to any request
        chan.next_frame(timeout=1)


def test_host_disconnect_mid_frame_then_reconnect(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    start(chan, "offline", 70, "echo before; sleep 2; echo after; exit 5")
    chan.wait_output(70, b"before\n")
    chan.send_raw(encode_json(MsgType.PING, 5, {})[:7])  # half a header, then hang up
    chan.close()
    time.sleep(3)  # the process ends while nobody listens
    chan = guest.connect()
    assert chan.ok(MsgType.PING, {}) == {}
    # what it printed while the host was away, then its EXIT, arrive on the new connection
    offline = chan.wait_exit(70)
    assert bytes(offline.stdout) == b"after\n" and offline.exit == {"status": 5, "signal": None}


def test_poweroff_ends_qemu(guests: Any) -> None:
    # this guest's initrd lists modules that cannot load: init logs that and serves anyway
    g = guests("poweroff", "initrd_modules")
    console = g.console()
    assert "hypervm-init: kernel modules: 2 listed, 3 failed" in console
    assert console.index("module /lib/modules/bogus.ko") < console.index(
        "module /lib/modules/extra"
    )
    assert g.chan is not None
    start(g.chan, "busy", 1, "exec sleep 1000")
    assert g.chan.ok(MsgType.POWEROFF, {}) == {}
    assert g.proc.wait(timeout=60) == 0
    assert "hypervm-init: powering off" in g.console()


#: init/src/stamp.h: the steps a START of `sh -c` (no early_reply) and its exit stamp, in order
STAMPED_CHAIN = ("start_recv", "start_checked", "cgroup", "layers", "cloned", "rootfs", "entered",
                 "mounted", "forked", "confined", "awaited", "start_ok", "exit_sent")
STAMPS_LINE = "hypervm-init: stamps t0="


def _stamps(g: Guest, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    # the whole line: the console may be read while init is still writing it
    while STAMPS_LINE not in (console := g.console()) or "\n" not in console[
            console.rindex(STAMPS_LINE):]:
        assert time.monotonic() < deadline, "no stamps line on the console"
        time.sleep(0.05)
    line = console[console.rindex(STAMPS_LINE):].splitlines()[0]
    t0, *steps = line.removeprefix(STAMPS_LINE).split()
    assert float(t0) > 0
    return {name: float(ms) for name, ms in (step.split("=") for step in steps)}


def test_debug_stamps_and_a_one_shot_runs_exit_before_the_spare_cgroup(
    guests: Any, guest: Guest
) -> None:
    """hypervm_stamps=1: one line of stamps per run, after its EXIT, in the documented order
    and format; the spare cgroup for a next START is not made beside the process just started
    (only after 500 ms idle, then stamped), nor in the EXIT's round (later, unstamped: see
    test_a_one_shot_runs_exit_round_does_no_cleanup). Without the flag: no stamps."""
    g = guests("stamps", append="hypervm_stamps=1")
    assert g.chan is not None and "hypervm-init: debug stamps on" in g.console()
    start(g.chan, "st", 1, "echo out; echo err >&2")
    assert g.chan.wait_exit(1).exit == {"status": 0, "signal": None}
    stamps = _stamps(g)
    names = list(stamps)
    order = [n for n in ("network_recv", "network_done", "network_ok", *STAMPED_CHAIN[:-1],
                         "shim", "spare", "status", "stdout_eof", "stderr_eof", "exit_sent")
             if n in stamps]
    assert names == order, names
    assert set(STAMPED_CHAIN) | {"shim", "status", "stdout_eof", "stderr_eof"} <= set(names)
    chain = [stamps[n] for n in STAMPED_CHAIN]
    assert chain == sorted(chain) and chain[0] == 0.0, stamps
    assert max(v for n, v in stamps.items() if n != "spare") == stamps["exit_sent"], stamps
    # a slow process: its spare after 500 ms idle; a quick one: none in its run (after its EXIT)
    assert "spare" not in stamps or stamps["spare"] >= stamps["start_ok"] + 499

    # a second run: its own line (the page was cleared), no spare in it either
    start(g.chan, "st2", 2, "true")
    g.chan.wait_exit(2)
    deadline = time.monotonic() + 10
    while g.console().count(STAMPS_LINE) < 2:
        assert time.monotonic() < deadline, "no second stamps line"
        time.sleep(0.05)
    second = _stamps(g)
    assert second["start_recv"] == 0.0 and "spare" not in second, second
    # off by default
    assert guest.chan is not None
    start(guest.chan, "nostamps", 501, "true")
    assert guest.chan.wait_exit(501).exit == {"status": 0, "signal": None}
    assert STAMPS_LINE not in guest.console() and "debug stamps" not in guest.console()


def test_a_one_shot_runs_exit_round_does_no_cleanup(guests: Any) -> None:
    """The round of init's loop that sends a main process's EXIT does nothing after it: the
    ended container's release (its mounts' teardown and the "ended" line), its cgroup's
    removal and the next spare wait for a quiet loop (~500 ms), so a one-shot run's guest
    leaves the host's cores to the VM's destruction (~12 ms of vCPU under TCG otherwise). Its
    stamps line, written in that round, has no spare; the next START still works."""
    g = guests("quietexit", append="hypervm_stamps=1")
    assert g.chan is not None
    start(g.chan, "q1", 1, "true")
    assert g.chan.wait_exit(1).exit == {"status": 0, "signal": None}
    exited = time.monotonic()
    assert "spare" not in _stamps(g)
    deadline = exited + 10
    while "container q1 ended" not in g.console():
        assert time.monotonic() < deadline, "the ended container was never released"
        time.sleep(0.02)
    assert time.monotonic() - exited >= 0.4, "released in the EXIT's round"
    start(g.chan, "q2", 2, "true")
    assert g.chan.wait_exit(2).exit == {"status": 0, "signal": None}


#: a main process that leaves a background process holding 64 MiB of touched memory (its
#: freeing makes the PID namespace's teardown last: ~0.1 s under TCG), then exits
HOARD = ("awk 'BEGIN { s = \"x\"; for (i = 0; i < 26; i++) s = s s; print > \"/tmp/held\"; "
         "close(\"/tmp/held\"); system(\"exec sleep 1000\") }' </dev/null >/dev/null 2>&1 & "
         "while [ ! -s /tmp/held ]; do sleep 0.05; done; echo spawned")


def test_an_exit_goes_before_its_containers_teardown_and_its_name_waits_for_it(
    guests: Any
) -> None:
    """init 0.7.6: a main process's EXIT goes out once its reaper has written the status and
    both output pipes are at EOF, before the reaper's own end, whose PID namespace teardown
    kills and reaps what is left of the container (here a process holding 64 MiB). Meanwhile the
    container is gone for the host, as when the EXIT came after that teardown: an EXEC into
    it gets ENOCONT, and a START of its name waits for the reaper (bounded), then runs, never
    EEXIST. Fails with init 0.7.5 and before: its EXIT came after the teardown, no START waited."""
    g = guests("earlyexit")
    chan = g.chan
    assert chan is not None
    start(chan, "again", 1, HOARD)
    first = chan.wait_exit(1, timeout=120)
    assert first.exit == {"status": 0, "signal": None} and bytes(first.stdout) == b"spawned\n"
    refused = chan.error(MsgType.EXEC, {"container": "again", "handle": 2,
                                        "process": {"args": ["true"], "env": ["PATH=/bin"]}})
    assert refused["code"] == "ENOCONT", refused
    start(chan, "again", 3, "echo second; grep -c . /sys/fs/cgroup/cgroup.procs; true")
    second = chan.wait_exit(3)
    # a container of its own: the reaper, sh and grep in its cgroup, none of the first's
    assert second.exit == {"status": 0, "signal": None}
    assert bytes(second.stdout) == b"second\n3\n", bytes(second.stdout)
    console = g.console()
    assert "container again: its START waits for the ended container's reaper" in console, console
    assert "did not end in" not in console
    assert console.count("container again ended") >= 1


def test_the_guest_kernel_reads_no_partition_table(guests: Any, tmp_path: Path) -> None:
    """Every disk of ours is a whole-disk erofs or ext4 (image layers, the pool's LUNs), so the
    HyperKernel has no partition parser (vmimage/kernel/README.md): adding a disk reads
    nothing from it. A disk with an MBR partition table shows no partition in the guest."""
    disk = tmp_path / "mbr.img"
    mbr = bytearray(1 << 20)
    # one Linux partition (type 0x83) from sector 1 to the disk's end, then the signature
    mbr[446:462] = bytes([0, 0, 2, 0, 0x83, 0, 0, 0]) + (1).to_bytes(4, "little") + (
        2047).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    disk.write_bytes(bytes(mbr))
    g = guests("mbr", extra=["-drive", f"file={disk},if=none,id=d9,format=raw,readonly=on",
                             "-device", "virtio-blk-pci,drive=d9,serial=mbr"])
    assert g.chan is not None
    start(g.chan, "parts", 1, "cat /proc/partitions")
    proc = g.chan.wait_exit(1)
    assert proc.exit == {"status": 0, "signal": None}
    names = [line.split()[-1] for line in proc.stdout.decode().splitlines()[2:] if line.strip()]
    assert len(names) == 3 and all(n.startswith("vd") for n in names), names
    assert not [n for n in names if n[-1].isdigit()], names


def test_a_layer_disks_read_ahead_is_raised_at_its_mount(guests: Any, tmp_path: Path) -> None:
    """init sets a layer disk's read-ahead to 1 MiB when it mounts it (a layer's programs and
    libraries are read around each first fault: fewer, larger reads; init/src/layers.c); a
    disk no START mounted keeps the kernel's 128 KiB. Fails with init 0.7.2 (128 on both)."""
    disk = tmp_path / "other.img"
    disk.write_bytes(bytes(1 << 20))
    g = guests("readahead", extra=["-drive", f"file={disk},if=none,id=d9,format=raw,readonly=on",
                                   "-device", "virtio-blk-pci,drive=d9,serial=other"])
    assert g.chan is not None
    start(g.chan, "ra", 1, "for d in /sys/block/vd*; do "
                           "echo $(cat $d/serial) $(cat $d/queue/read_ahead_kb); done")
    proc = g.chan.wait_exit(1)
    assert proc.exit == {"status": 0, "signal": None}
    found = dict(line.split() for line in proc.stdout.decode().splitlines())
    assert found[LAYER] == "1024" and found["other"] == "128", found


def test_a_layer_disk_is_found_at_the_pci_address_the_start_names(guests: Any,
                                                                   artifacts: dict[str, Path]
                                                                   ) -> None:
    """init 0.7.5, START rootfs.pci (a cold VM's host pins its layer disks): the disk at the
    address is mounted without any disk's serial being read, so a serial no disk has still
    mounts when its address holds a disk (init does not check the serial: the host is
    trusted). An address with no virtio-blk disk (none there, the virtio-serial controller)
    falls back to the serial; with no such serial either, ENODEV."""
    g = guests("slots", extra=["-drive", f"file={artifacts['layer']},if=none,id=d9,format=raw,"
                               "readonly=on", "-device",
                               "virtio-blk-pci,drive=d9,serial=elsewhere,addr=0x10"])
    assert g.chan is not None

    def run(handle: int, layer: str, pci: str) -> dict[str, Any]:
        # the upper layer has no shell: over the lower one (found by serial, a null address)
        layers, addresses = ([LAYER, layer], [None, pci]) if layer == UPPER_LAYER else (
            [layer], [pci])
        return {"container": f"slot{handle}", "handle": handle,
                "rootfs": {"layers": layers, "pci": addresses},
                "process": {"args": ["sh", "-c", "cat /etc/image-marker"], "env": ["PATH=/bin"]}}

    for handle, layer, pci, marker in (
            (1, LAYER, "0000:00:1e.0", b"from the layer\n"),
            (2, UPPER_LAYER, "0000:00:02.0", b"from the upper layer\n"),
            (3, "noserial", "0000:00:10.0", b"from the layer\n")):
        g.chan.ok(MsgType.START, run(handle, layer, pci))
        proc = g.chan.wait_exit(handle)
        assert proc.exit == {"status": 0, "signal": None}, (layer, proc.stderr)
        assert proc.stdout == marker, layer
    console = g.console()
    assert re.search(r"layer noserial \(/dev/vd[a-z] at 0000:00:10\.0\) mounted", console)
    assert re.search(rf"layer {LAYER} \(/dev/vd[a-z], by serial\) mounted", console)
    assert re.search(rf"layer {UPPER_LAYER} \(/dev/vd[a-z], by serial\) mounted", console)
    error = g.chan.error(MsgType.START, run(4, "nowhere", "0000:00:1e.0"))
    assert error["code"] == "ENODEV" and "nowhere" in error["message"], error
    error = g.chan.error(MsgType.START, run(5, "bad", "0000:00:1E.0"))
    assert error["code"] == "EINVAL" and error["message"].startswith("rootfs.pci[0]:"), error


def test_a_containers_etc_files_on_a_merged_etc(guests: Any) -> None:
    """After a NETWORK, a writable container's /etc is the image's (the upper layer's files
    over the lower's, its mode and owner) plus hosts, resolv.conf and hostname, which no layer
    has: a START's are in a layer init puts above the image's (none is created in the overlay,
    which would copy /etc up, and none is a bind mount); the container can add and remove
    files there."""
    g = guests("etcfiles")
    assert g.chan is not None
    g.chan.ok(MsgType.NETWORK, {"nameservers": ["10.0.2.3"],
                                "hosts": [{"address": "10.0.2.15", "names": ["etc"]}]})
    script = (
        "ls /etc | tr '\\n' ,; echo; stat -c '%a %u %g' /etc; cat /etc/image-marker; "
        "grep etc /etc/hosts; cat /etc/resolv.conf /etc/hostname; "
        "grep -c ' /etc/\\(hosts\\|resolv.conf\\|hostname\\) ' /proc/mounts; "
        "echo new > /etc/new && rm /etc/image-marker && ls /etc | tr '\\n' ,"
    )
    payload = {"container": "etc", "handle": 1, "hostname": "etc",
               "rootfs": {"layers": [LAYER, UPPER_LAYER], "readonly": False},
               "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"]}}
    g.chan.ok(MsgType.START, payload)
    done = g.chan.wait_exit(1)
    assert done.exit == {"status": 0, "signal": None}, bytes(done.stderr)
    assert done.stdout.decode().splitlines() == [
        "hostname,hosts,image-marker,only-upper,resolv.conf,",
        "751 0 42",
        "from the upper layer",
        "10.0.2.15\tetc",
        "nameserver 10.0.2.3",
        "etc",
        "0",
        "hostname,hosts,new,only-upper,resolv.conf,",
    ]
