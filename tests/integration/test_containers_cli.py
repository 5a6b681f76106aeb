"""Issue 17, part 1 through the real CLI: detached VMs under their supervisor, real libvirt."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HYPERVM, REPO, TEST_TAG, our_domains, run_hypervm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

TICKER = "i=0; while true; do echo tick $i; echo warn $i >&2; i=$((i+1)); sleep 0.5; done"


def _name(names: list[str], suffix: str) -> str:
    name = f"{TEST_TAG}-{suffix}"
    names.append(name)
    return name


def _detached(busybox_rootfs: Path, name: str, script: str, *extra: str):  # noqa: ANN202
    return run_hypervm("run", "-d", "--name", name, *extra, "--rootfs", str(busybox_rootfs),
                       "--", "sh", "-c", script)


def test_detached_lifecycle(busybox_rootfs: Path, names: list[str]) -> None:
    name = _name(names, "life")
    started = _detached(busybox_rootfs, name, TICKER)
    assert started.returncode == 0, started.stderr.decode()
    assert started.stdout.decode().strip() == name
    vm_id = json.loads(run_hypervm("inspect", name).stdout)[0]["id"]
    assert vm_id in our_domains()

    ps = json.loads(run_hypervm("ps", "--format", "json").stdout)
    mine = next(c for c in ps if c["name"] == name)
    assert (mine["status"], mine["id"]) == ("running", vm_id)
    assert name in run_hypervm("ps").stdout.decode()

    # logs -f follows the output live until the container exits (stopped below)
    follower = subprocess.Popen([*HYPERVM, "logs", "-f", name], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)
    execd = run_hypervm("exec", "-e", "X=42", "-w", "/tmp", name, "sh", "-c",
                        'echo "$X $(pwd) $(hostname)"; exit 5')
    assert (execd.stdout, execd.returncode) == (f"42 /tmp {name}\n".encode(), 5)
    piped = run_hypervm("exec", "-i", name, "cat", input=b"through stdin\n")
    assert piped.stdout == b"through stdin\n"
    assert run_hypervm("exec", name, "no-such-command").returncode == 127

    tail = run_hypervm("logs", "--tail", "2", "-t", name)
    lines = tail.stdout.decode().splitlines()
    assert len(lines) <= 2 and all(line.split()[1] == "tick" for line in lines)
    assert b"warn" in tail.stderr

    stopped = run_hypervm("stop", "-t", "1", name)
    assert stopped.returncode == 0, stopped.stderr.decode()
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert b"tick 0\n" in out and b"tick 3\n" in out
    assert vm_id not in our_domains()

    state = json.loads(run_hypervm("inspect", name).stdout)[0]
    assert (state["status"], state["exit_code"]) == ("exited", 143)
    assert [e["event"] for e in state["events"]][:2] == ["create", "start"]
    assert "die" in [e["event"] for e in state["events"]]
    assert run_hypervm("wait", name).stdout == b"143\n"
    assert name not in run_hypervm("ps").stdout.decode()
    assert name in run_hypervm("ps", "-a").stdout.decode()
    assert b"tick 1" in run_hypervm("logs", name).stdout

    assert run_hypervm("rm", name).returncode == 0
    assert not Path(state["box"]).exists()
    gone = run_hypervm("inspect", name)
    assert gone.returncode != 0 and b"no such container" in gone.stderr


def test_names_are_unique_and_rm_needs_force(busybox_rootfs: Path, names: list[str]) -> None:
    name = _name(names, "uniq")
    assert _detached(busybox_rootfs, name, "sleep 600").returncode == 0
    again = _detached(busybox_rootfs, name, "sleep 600")
    assert again.returncode != 0 and b"--name" in again.stderr and b"in use" in again.stderr
    refused = run_hypervm("rm", name)
    assert refused.returncode != 0 and b"rm -f" in refused.stderr
    killed = run_hypervm("kill", "-s", "USR1", name)
    assert killed.returncode == 0
    assert run_hypervm("wait", name).stdout == b"138\n"
    vm_id = json.loads(run_hypervm("inspect", name).stdout)[0]["id"]
    assert vm_id not in our_domains()


def test_rm_force_kills_the_vm_and_run_rm_removes_itself(busybox_rootfs: Path,
                                                        names: list[str]) -> None:
    name = _name(names, "force")
    assert _detached(busybox_rootfs, name, "sleep 600").returncode == 0
    vm_id = json.loads(run_hypervm("inspect", name).stdout)[0]["id"]
    assert run_hypervm("rm", "-f", name).returncode == 0
    assert vm_id not in our_domains()
    assert name not in run_hypervm("ps", "-a").stdout.decode()

    short = _name(names, "autorm")
    assert _detached(busybox_rootfs, short, "echo bye", "--rm").returncode == 0
    deadline = time.monotonic() + 30
    while short in run_hypervm("ps", "-a").stdout.decode() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert short not in run_hypervm("ps", "-a").stdout.decode()


def test_a_killed_supervisor_takes_its_vm(busybox_rootfs: Path, names: list[str]) -> None:
    name = _name(names, "orphan")
    assert _detached(busybox_rootfs, name, "sleep 600").returncode == 0
    state = json.loads(run_hypervm("inspect", name).stdout)[0]
    subprocess.run(["kill", "-9", str(state["supervisor_pid"])], check=True)
    deadline = time.monotonic() + 20
    while state["id"] in our_domains() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state["id"] not in our_domains()
    after = json.loads(run_hypervm("inspect", name).stdout)[0]
    assert after["status"] == "exited" and "supervisor is gone" in after["error"]


def test_detached_image_run_with_a_root_only_box(image_ref: str, names: list[str]) -> None:
    name = _name(names, "image")
    started = run_hypervm("run", "-d", "--name", name, image_ref, "--", "sh", "-c",
                          "echo from-image; sleep 600")
    assert started.returncode == 0, started.stderr.decode()
    state = json.loads(run_hypervm("inspect", name).stdout)[0]
    assert state["image"] == image_ref and state["status"] == "running"
    box = Path(state["box"])
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
    assert stat.S_IMODE(box.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(state["socket"]).stat().st_mode) == 0o600
    assert not (box / "pod.pickle").exists()
    deadline = time.monotonic() + 20
    while b"from-image" not in run_hypervm("logs", name).stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run_hypervm("logs", name).stdout == b"from-image\n"
    assert run_hypervm("rm", "-f", name).returncode == 0
    assert state["id"] not in our_domains()
