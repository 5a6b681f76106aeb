"""The HyperKernel boots in QEMU (TCG, PVH, qboot) and runs real glibc programs.

No libvirt and no guest init of ours here: each test builds an initrd whose /init is a busybox
shell script, boots QEMU directly and reads the serial console log. The glibc test attaches two
erofs layer images built by vmimage.rootfs (the host's python3.11 with its libraries and stdlib,
plus an upper layer with an opaque directory and a whiteout), stacks them with overlayfs in the
guest, switch_roots into the result and runs a Python script exercising threads, fork/exec
of dynamically linked binaries, sockets (unix, IPv4, IPv6), ptys, epoll/eventfd, POSIX
semaphores, namespaces and cgroup v2; an ext4 disk and a 9p share are mounted too. Every QEMU
process is killed at teardown, failed or not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmimage.initrd import CpioEntry, newc_archive
from vmimage.kernel import Kernel, find_kernel
from vmimage.rootfs import build_layer_image, make_busybox_rootfs

pytestmark = [pytest.mark.vm, pytest.mark.slow]

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
BUSYBOX = Path("/bin/busybox")
PYTHON = Path("/usr/bin/python3.11")
GLIBC_TOOLS = (Path("/bin/ls"), Path("/usr/bin/env"))
INIT_MARK = "HYPERVM-INIT-START"
GLIBC_MARK = "HYPERVM-GLIBC-OK"


@pytest.fixture(scope="module")
def hyperkernel() -> Kernel:
    if shutil.which(QEMU) is None or not QBOOT.exists():
        pytest.skip("qemu-system-x86 with qboot not installed")
    kernel = find_kernel(_cfg(), env={"HYPERVM_KERNEL": "hyperkernel"})
    assert kernel.kind == "hyperkernel", "no HyperKernel built: run make kernel"
    return kernel


def _cfg():  # noqa: ANN202
    from hypervm.config import config_from_env

    return config_from_env()


class Guest:
    """A QEMU process booting a kernel + initrd; its serial console goes to ``log``."""

    def __init__(self, proc: subprocess.Popen, log: Path, started: float) -> None:
        self.proc, self.log, self.started = proc, log, started

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the console shows ``pattern`` (a regex) or QEMU exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.console())
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.proc.poll() is not None else "timed out"
                pytest.fail(f"guest {state} before {pattern!r}; console tail:\n"
                            + self.console()[-4000:])
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> float:
        """Seconds from start to QEMU's exit (the guest powered off)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("guest did not power off; console tail:\n" + self.console()[-2000:])
        return time.monotonic() - self.started


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Callable[..., Guest]]:
    procs: list[subprocess.Popen] = []

    def start(kernel: Kernel, initrd: Path, *, disks: tuple[Path, ...] = (), smp: int = 1,
              shares: tuple[tuple[str, Path], ...] = (), memory_mb: int = 512,
              cmdline: str = "console=ttyS0 panic=-1") -> Guest:
        log = tmp_path / f"console-{len(procs)}.log"
        argv = [QEMU, "-M", "pc", "-accel", "tcg", "-bios", str(QBOOT), "-nodefaults",
                "-nographic", "-monitor", "none", "-serial", f"file:{log}", "-no-reboot",
                "-m", str(memory_mb), "-smp", str(smp), "-kernel", str(kernel.path),
                "-initrd", str(initrd), "-append", cmdline]
        for i, disk in enumerate(disks):
            argv += ["-drive", f"file={disk},if=none,id=d{i},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=d{i},serial=layer{i}"]
        for tag, directory in shares:
            argv += ["-virtfs", f"local,path={directory},mount_tag={tag},security_model=none"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        return Guest(proc, log, started)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def _initrd(path: Path, script: str) -> Path:
    """An initrd with /bin/busybox and /init = ``script`` (a busybox sh script)."""
    entries = [
        CpioEntry.directory("bin"), CpioEntry.file("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        CpioEntry.directory("dev"), CpioEntry.chardev("dev/console", 5, 1),
        CpioEntry.file("init", ("#!/bin/busybox sh\n" + script).encode(), 0o755),
    ]
    path.write_bytes(newc_archive(entries))
    path.chmod(0o644)
    return path


def test_cached_kernel_matches_the_fragment(hyperkernel: Kernel) -> None:
    """What make kernel published: every fragment line survived, files readable by QEMU."""
    import json
    import stat

    from vmimage.kernel import hyperkernel as hk
    from vmimage.kernel.kconfig import dropped_options

    directory = hyperkernel.path.parent
    assert directory.name == hk.current_key(), "kernel is stale: run make kernel"
    assert dropped_options(hk.FRAGMENT.read_text(), (directory / "config").read_text()) == []
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["version"] == hyperkernel.version and meta["build_seconds"] > 0
    for path in (directory, *directory.iterdir()):
        want = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    assert hyperkernel.path.read_bytes()[:4] == b"\x7fELF"  # uncompressed vmlinux (PVH)


BOOT_SCRIPT = f"""\
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
echo "{INIT_MARK} $(/bin/busybox uname -r) $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox poweroff -f
"""


def test_boots_to_init_and_powers_off(hyperkernel: Kernel, boot, tmp_path: Path) -> None:  # noqa: ANN001
    guest = boot(hyperkernel, _initrd(tmp_path / "initrd.img", BOOT_SCRIPT))
    match = guest.wait_for(rf"{INIT_MARK} (\S+) (\S+)", timeout=60)
    to_init = time.monotonic() - guest.started
    total = guest.wait_exit(timeout=30)
    assert match.group(1) == hyperkernel.version
    print(f"\nHyperKernel {hyperkernel.version}: /init after {to_init:.2f} s wall "
          f"(guest uptime {match.group(2)} s), powered off after {total:.2f} s")
    assert "Kernel panic" not in guest.console()


GUEST_CHECK = r'''
import asyncio, ctypes, json, multiprocessing, os, pty, select, signal, socket, subprocess, sys
import threading, time

checks = {}

def check(name):
    def run(fn):
        fn()
        checks[name] = "ok"
    return run

@check("threads")
def _():
    out = []
    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    assert sorted(out) == list(range(8))

@check("exec_glibc")
def _():
    ls = subprocess.run(["/opt/glibc/ls", "-ln", "/data"], capture_output=True, text=True,
                        check=True).stdout
    assert "new" in ls and "old" not in ls, ls
    env = subprocess.run(["/opt/glibc/env"], env={"K": "V"}, capture_output=True, text=True)
    assert env.stdout == "K=V\n", env

@check("overlay_on_erofs")
def _():
    assert os.listdir("/data") == ["new"], os.listdir("/data")  # opaque dir hides lower
    assert not os.path.exists("/gone")  # whiteout hides lower file
    assert open("/kept").read() == "kept\n"
    with open("/data/written", "w") as f:  # writable upper on tmpfs
        f.write("x")
    assert os.getxattr("/lower1/data", "trusted.overlay.opaque") == b"y"
    st = os.stat("/suid")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1001, 0o4755), st

@check("sockets")
def _():
    a, b = socket.socketpair()
    a.sendall(b"ping"); assert b.recv(4) == b"ping"
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = socket.socket(fam); srv.bind((host, 0)); srv.listen()
        cli = socket.create_connection(srv.getsockname()[:2]); conn, _ = srv.accept()
        cli.sendall(b"hi"); assert conn.recv(2) == b"hi"
        for s in (srv, cli, conn): s.close()
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()

@check("pty_epoll_eventfd")
def _():
    master, slave = pty.openpty()
    os.write(slave, b"x\n")
    ep = select.epoll(); ep.register(master, select.EPOLLIN)
    assert ep.poll(5)
    efd = os.eventfd(0); os.eventfd_write(efd, 3); assert os.eventfd_read(efd) == 3

@check("signals")
def _():
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert got == [1]
    signal.signal(signal.SIGALRM, lambda *a: got.append(2))
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    deadline = time.monotonic() + 10
    while got == [1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [1, 2], got

@check("multiprocessing")
def _():
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=q.put, args=(42,)); p.start()
    assert q.get(timeout=60) == 42
    p.join()
    sem = multiprocessing.Semaphore(1); sem.acquire(); sem.release()  # POSIX sem in /dev/shm

@check("asyncio")
def _():
    async def main():
        await asyncio.sleep(0.01)
        return 7
    assert asyncio.run(main()) == 7

@check("namespaces")
def _():
    libc = ctypes.CDLL(None, use_errno=True)
    flags = 0x00020000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000 | 0x10000000
    pid = os.fork()  # NEWNS | NEWUTS | NEWIPC | NEWPID | NEWNET | NEWUSER
    if pid == 0:
        os._exit(0 if libc.unshare(flags) == 0 else ctypes.get_errno())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, os.strerror(os.waitstatus_to_exitcode(status))

@check("ext4_and_9p")
def _():
    assert open("/ext4/hello").read() == "ext4\n"
    assert open("/share/from-host").read() == "host\n"
    with open("/share/from-guest", "w") as f:
        f.write("guest\n")
    os.setxattr("/share/from-guest", "user.k", b"v")

@check("cgroup2")
def _():
    controllers = open("/sys/fs/cgroup/cgroup.controllers").read().split()
    assert {"memory", "pids"} <= set(controllers), controllers

print("HYPERVM-GLIBC-OK", sys.version.split()[0], json.dumps(checks), flush=True)
'''

GLIBC_SCRIPT = f"""\
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /lower0 /lower1 /upper /merged
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{INIT_MARK} $(uname -r)"
mount -t erofs -o ro /dev/vda /lower0
mount -t erofs -o ro /dev/vdb /lower1
mount -t tmpfs tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower1:/lower0,upperdir=/upper/u,workdir=/upper/w /merged
mkdir -p /merged/lower1 /merged/ext4 /merged/share
mount --bind /lower1 /merged/lower1
mount -t ext4 -o ro /dev/vdc /merged/ext4
mount -t 9p -o trans=virtio,version=9p2000.L,posixacl share /merged/share
mount -t proc proc /merged/proc
mount -t sysfs sysfs /merged/sys
mount -t cgroup2 cgroup2 /merged/sys/fs/cgroup
mount -t devtmpfs devtmpfs /merged/dev
mkdir -p /merged/dev/pts /merged/dev/shm
mount -t devpts -o ptmxmode=0666 devpts /merged/dev/pts
mount -t tmpfs tmpfs /merged/dev/shm
ip link set lo up
# switch_root, not chroot: unshare(CLONE_NEWUSER) is refused inside a chroot
exec switch_root /merged /bin/sh -c \
    '/usr/bin/python3.11 -I /check.py; echo "guest check exited with $?"; poweroff -f'
"""


def _copy_with_libs(binaries: list[Path], root: Path) -> None:
    """Copy the shared libraries ``binaries`` need into ``root`` at their host paths."""
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for lib in re.findall(r"(/\S+\.so[\w.]*)", out):
            dest = root / lib.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(lib), dest)


@pytest.fixture(scope="module")
def glibc_layers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two erofs layers: base (busybox + host python3.11, ls, env with their libraries) and an
    upper one, lz4hc-compressed, with an opaque /data, a whiteout for /gone and the check
    script (big enough to span compressed clusters)."""
    if not PYTHON.exists():
        pytest.skip(f"{PYTHON} not on the host")
    work = tmp_path_factory.mktemp("glibc")
    base = make_busybox_rootfs(work / "base")
    for applet in ("usr/bin/env", "usr/bin/python3.11"):
        (base / applet).unlink(missing_ok=True)
    (base / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(PYTHON, base / "usr/bin/python3.11")
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(stdlib, base / "usr/lib/python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "turtledemo",
                                                  "ensurepip", "lib2to3", "site-packages",
                                                  "dist-packages", "config-*"))
    (base / "opt/glibc").mkdir(parents=True)
    for tool in GLIBC_TOOLS:
        shutil.copy2(tool, base / "opt/glibc" / tool.name)
    _copy_with_libs([PYTHON, *GLIBC_TOOLS, *(base / "usr/lib/python3.11/lib-dynload").glob(
        "*.so")], base)
    (base / "data").mkdir()
    (base / "data/old").write_text("old\n")
    (base / "gone").write_text("gone\n")
    (base / "kept").write_text("kept\n")
    (base / "suid").write_text("#!/bin/sh\n")
    os.chown(base / "suid", 1000, 1001)
    os.chmod(base / "suid", 0o4755)
    upper = work / "upper"
    (upper / "data").mkdir(parents=True)
    (upper / "data/new").write_text("new\n")
    os.setxattr(upper / "data", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "gone", 0o020000, os.makedev(0, 0))
    (upper / "check.py").write_text(GUEST_CHECK + "\n# padding\n" * 4000)
    return (build_layer_image(base, work / "base.erofs"),
            build_layer_image(upper, work / "upper.erofs", compress="lz4hc"))  # EROFS_FS_ZIP


def test_runs_glibc_python_on_overlay_of_erofs(hyperkernel: Kernel, boot, glibc_layers,  # noqa: ANN001
                                               tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to build layers with foreign owners and trusted xattrs")
    initrd = _initrd(tmp_path / "initrd.img", GLIBC_SCRIPT)
    ext4_src = tmp_path / "ext4-src"
    ext4_src.mkdir()
    (ext4_src / "hello").write_text("ext4\n")
    ext4 = tmp_path / "disk.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(ext4_src), str(ext4), "8M"],
                   check=True, capture_output=True)
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host").write_text("host\n")
    guest = boot(hyperkernel, initrd, disks=(*glibc_layers, ext4), smp=2,
                 shares=(("share", share),))
    guest.wait_for(INIT_MARK, timeout=60)
    match = guest.wait_for(rf"{GLIBC_MARK} (\S+) (.*)", timeout=240)
    guest.wait_exit(timeout=60)
    assert match.group(1).startswith("3.11")
    print(f"\nglibc checks in the guest: {match.group(2)} after "
          f"{time.monotonic() - guest.started:.1f} s")
    assert "guest check exited with 0" in guest.console()
    assert (share / "from-guest").read_text() == "guest\n"  # 9p writes reach the host
    assert os.getxattr(share / "from-guest", "user.k") == b"v"
