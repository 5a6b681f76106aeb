"""Inside the guest, a container is confined as Docker confines one (issue 15, finding 9).

Black-box, like test_init_qemu.py (whose QEMU harness this reuses): our init in a HyperKernel
guest, spoken to through init/PROTOCOL.md. What a container process sees: Docker's 14 default
capabilities, a seccomp filter refusing what Docker's profile refuses, masked and read-only
/proc paths; what it gets: a cgroup with the START's memory.max and pids.max, a bounded
writable layer, and an OOM kill reported as such in its EXIT.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from executor.guest.protocol import MsgType, encode_json
from tests.integration import test_init_qemu as qemu
from tests.integration.test_init_qemu import LAYER, Channel, Guest

# the QEMU harness's fixtures (a guest per module)
kernel, artifacts, guests, guest = qemu.kernel, qemu.artifacts, qemu.guests, qemu.guest
_console_on_failure = qemu._console_on_failure

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MIB = 1024 * 1024
DOCKER_CAPS = "00000000a80425fb"


def run(chan: Channel, name: str, handle: int, script: str, *, limits: dict[str, int] | None
        = None, rootfs: dict[str, Any] | None = None, timeout: float = 60.0,
        **process: Any) -> Any:
    payload: dict[str, Any] = {
        "container": name,
        "handle": handle,
        "rootfs": rootfs or {"layers": [LAYER]},
        "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"], **process},
    }
    if limits is not None:
        payload["limits"] = limits
    chan.ok(MsgType.START, payload)
    return chan.wait_exit(handle, timeout=timeout)


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_root_has_dockers_capabilities_seccomp_and_no_new_privs(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    proc = run(chan, "caps", 200, "cat /proc/self/status")
    fields = status_fields(proc.stdout.decode())
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == DOCKER_CAPS, fields
    assert fields["CapInh"] == fields["CapAmb"] == "0000000000000000"
    assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1"


def test_a_user_keeps_the_bounding_set_and_set_id(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    proc = run(chan, "user", 201, "cat /proc/self/status", uid=1000, gid=1000)
    fields = status_fields(proc.stdout.decode())
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert fields["CapBnd"] == DOCKER_CAPS and fields["Seccomp"] == "2"
    assert fields["NoNewPrivs"] == "0"  # as Docker: su, sudo, ping keep working
    forced = run(chan, "user-nnp", 202, "grep NoNewPrivs /proc/self/status", uid=1000,
                 no_new_privs=True)
    assert forced.stdout.decode().split() == ["NoNewPrivs:", "1"]


def test_seccomp_and_capabilities_refuse_what_docker_refuses(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    script = (
        "unshare -U true; echo unshare=$?; "
        "unshare -m true; echo unshare_mnt=$?; "
        "mount -t tmpfs none /mnt; echo mount=$?; "
        "nsenter -t 1 -m true; echo nsenter=$?; "
        "echo ok > /proc/sys/kernel/hostname; echo sysctl=$?; "
        "echo h > /proc/sysrq-trigger; echo sysrq=$?; "
        "for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do "
        "[ -e $p ] && echo \"masked $p $(wc -c < $p)\"; done; "
        "echo \"masked /sys/firmware $(ls -A /sys/firmware | wc -l)\""
    )
    proc = run(chan, "seccomp", 203, script)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    lines = out.splitlines()
    for name in ("unshare", "unshare_mnt", "mount", "nsenter", "sysctl", "sysrq"):
        assert f"{name}=0" not in lines, (out, err)
    assert "Operation not permitted" in err, err
    assert "Read-only file system" in err, err
    masked = {line.split()[1]: line.split()[2] for line in lines if line.startswith("masked ")}
    assert "/proc/timer_list" in masked and "/sys/firmware" in masked, out
    assert set(masked.values()) == {"0"}, out
    assert proc.exit["status"] == 0


def test_limits_bound_memory_pids_and_the_writable_layer(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    limits = {"memory": 48 * MIB, "pids": 16, "scratch": 8 * MIB}
    show = run(chan, "show", 210, "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; "
                                  "cat /proc/self/cgroup; df -k / | tail -1", limits=limits)
    lines = show.stdout.decode().splitlines()
    assert lines[:3] == [str(48 * MIB), "16", "0::/"], lines
    assert lines[3].split()[1] == "8192", lines
    # the writable layer: ENOSPC past its bound
    disk = run(chan, "disk", 211, "dd if=/dev/zero of=/big bs=1M count=20; echo dd=$?",
               limits=limits)
    assert "No space left on device" in disk.stderr.decode()
    assert "dd=0" not in disk.stdout.decode()
    # pids: a fork bomb stops at pids.max (the reaper and the shell count)
    bomb = run(chan, "pids", 212, "(i=0; while [ $i -lt 40 ]; do sleep 100 & i=$((i+1)); done) "
                                  "2>/dev/null; read n < /sys/fs/cgroup/pids.current; echo $n; "
                                  "while read k v; do echo $k $v; done "
                                  "< /sys/fs/cgroup/pids.events", limits=limits)
    out = bomb.stdout.decode().split()
    assert int(out[0]) <= 16 and out[1] == "max" and int(out[2]) > 0, (out, bomb.stderr)
    # memory: the allocating process is OOM-killed, and the EXIT says so
    oom = run(chan, "oom", 213, "awk 'BEGIN { s = \"x\"; while (1) s = s s }'", limits=limits,
              timeout=120)
    assert oom.exit == {"status": None, "signal": 9, "reason": "oom"}, (oom.exit, oom.stderr)
    # init logs it right after the EXIT (console lines cost ~1 ms under TCG): wait for it
    deadline = time.monotonic() + 10
    while "container oom ended (out of memory)" not in guest.console():
        assert time.monotonic() < deadline, guest.console()[-2000:]
        time.sleep(0.05)
    # a container that stays within its limits has no reason
    fine = run(chan, "oom", 214, "true", limits=limits)
    assert fine.exit == {"status": 0, "signal": None}


def test_exec_joins_the_containers_cgroup(guest: Guest) -> None:
    chan = guest.chan
    assert chan is not None
    chan.ok(MsgType.START, {
        "container": "host", "handle": 220, "rootfs": {"layers": [LAYER]},
        "limits": {"memory": 64 * MIB, "pids": 32},
        "process": {"args": ["sh", "-c", "echo up; exec sleep 1000"], "env": ["PATH=/bin"]}})
    chan.wait_output(220, b"up\n")
    chan.ok(MsgType.EXEC, {"container": "host", "handle": 221, "process": {
        "args": ["sh", "-c", "cat /proc/self/cgroup /sys/fs/cgroup/pids.max; "
                             "grep CapEff /proc/self/status"], "env": ["PATH=/bin"]}})
    proc = chan.wait_exit(221)
    assert proc.stdout.decode().split() == ["0::/", "32", "CapEff:", DOCKER_CAPS]
    chan.ok(MsgType.SIGNAL, {"handle": 220, "signal": 9})
    assert chan.wait_exit(220).exit == {"status": None, "signal": 9}


def test_a_prepared_container_takes_the_starts_limits(guests: Any) -> None:
    g = guests("confine-prepared")
    chan = g.connect()
    rootfs = {"layers": [LAYER], "readonly": False}
    chan.ok(MsgType.PREPARE, {"rootfs": rootfs, "limits": {"scratch": 64 * MIB}})
    proc = run(chan, "prep", 230, "cat /sys/fs/cgroup/memory.max /proc/self/cgroup; "
                                  "df -k / | tail -1; grep CapEff /proc/self/status",
               rootfs=rootfs, limits={"memory": 40 * MIB, "pids": 8, "scratch": 4 * MIB})
    lines = proc.stdout.decode().splitlines()
    assert "container prep started (prepared)" in g.console()
    assert lines[:2] == [str(40 * MIB), "0::/"], (lines, proc.stderr)
    assert lines[2].split()[1] == "4096", lines
    assert lines[3].split() == ["CapEff:", DOCKER_CAPS]


#: cat a container's own cgroup files: its limits, its OOM grouping, its memory use so far
CGROUP_FILES = ("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max "
                "/sys/fs/cgroup/memory.oom.group; grep -c . /sys/fs/cgroup/cgroup.procs; "
                "exec sleep 1000")


def test_a_groups_starts_take_spare_cgroups_made_ahead_each_as_fresh(guests: Any) -> None:
    """init 0.7.4 (task "twocont"): a guest idle with no process (a snapshot's template) makes
    two spare cgroups, so a 2-container group's STARTs, sent back to back, both take one made
    ahead (before, the second made its own at its START: ~10 ms under TCG). A third START sent
    with them finds none (no spare is made beside a running process) and makes its own, and
    init says so. Each is as a fresh cgroup: its START's own limits (a pids bound or none),
    OOM grouping, only its own processes."""
    g = guests("confine-spares")
    chan = g.chan
    assert chan is not None
    time.sleep(2.0)  # four times the idle period after which init makes the further spares
    starts = {"first": (240, {"memory": 48 * MIB, "pids": 16}),
              "second": (241, {"memory": 40 * MIB}),
              "third": (242, {"memory": 32 * MIB, "pids": 8})}
    for rid, (name, (handle, limits)) in enumerate(starts.items(), start=1000):
        chan.send_raw(encode_json(MsgType.START, rid, {
            "container": name, "handle": handle, "rootfs": {"layers": [LAYER]},
            "limits": limits,
            "process": {"args": ["sh", "-c", CGROUP_FILES], "env": ["PATH=/bin"]}}))
    for rid in (1000, 1001, 1002):
        reply = chan.next_frame()
        assert (reply.id, reply.type) == (rid, MsgType.OK), reply.json()
    for handle, limits in starts.values():
        chan.wait_output(handle, b"\n1\n3\n")  # the reaper, sh, grep: nobody else's
        assert chan.procs[handle].stdout.decode().split() == [
            str(limits["memory"]), str(limits.get("pids", "max")), "1", "3"]
    deadline = time.monotonic() + 10
    while "container third started" not in (console := g.console()):
        assert time.monotonic() < deadline, console[-2000:]
        time.sleep(0.05)
    started = {m[1]: line for line in console.splitlines()
               if (m := re.search(r"hypervm-init: container (\w+) started", line))}
    assert not started["first"].endswith("(made at its START)"), started
    assert not started["second"].endswith("(made at its START)"), started
    assert started["third"].endswith("(made at its START)"), started
    for handle, _ in starts.values():
        chan.ok(MsgType.SIGNAL, {"handle": handle, "signal": 9})
        assert chan.wait_exit(handle).exit == {"status": None, "signal": 9}
