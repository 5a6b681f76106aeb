"""A pod of two containers and two vCPUs from a snapshot, with a real VM (issue 18, task
"shapes2"): both STARTs are sent before either reply is awaited (HyperVM.send_start, as the
Mesos executor starts a group) and init serves them in order, each container running its own
process with its own output and exit, with both vCPUs online. (init 0.7.1's pinning of init
to the boot CPU at nice -10, which made the second START cheaper, was reverted: with it a
standby's RESEED went unanswered for 30 s now and then, DEVELOPERS.md "shapes2".)"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from executor.launcher import boot_vm
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, our_domains
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]

#: the container's name, then the CPUs online
SCRIPT = "echo $0; cat /sys/devices/system/cpu/online"


def _pod(cfg: Any, name: str) -> PodSpec:
    layer = ensure_warmup_layer(cfg.rootfs_dir)
    containers = tuple(
        Container(c, Rootfs(layers=(layer,)),
                  Process(args=("/bin/sh", "-c", SCRIPT, c), env=("PATH=/bin",)))
        for c in ("first", "second"))
    return PodSpec(name=f"{TEST_TAG}-{name}", containers=containers,
                   resources=Resources(cpus=2, memory_mib=128))


def test_a_two_container_pod_starts_both_back_to_back_with_both_vcpus_online(
        host_cfg: Any, fresh_store: Any) -> None:
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True, snapshot_vcpus=2)
    outputs: dict[str, list[bytes]] = {"first": [], "second": []}
    exits: dict[str, Any] = {}
    done = threading.Semaphore(0)

    def on_exit(name: str) -> Any:
        return lambda status: (exits.__setitem__(name, status), done.release())

    with boot_vm(cfg, _pod(cfg, "grp")) as vm:
        assert vm.warm  # from the snapshot (its template made first), its spare onlined
        sent = [vm.send_start(c, on_stdout=outputs[c.name].append,
                              on_stderr=outputs[c.name].append, on_exit=on_exit(c.name))
                for c in vm.pod.containers]
        handles = [vm.wait_started(s) for s in sent]
        assert [h.container for h in handles] == ["first", "second"]
        assert len({h.pid for h in handles}) == 2 and len({h.handle for h in handles}) == 2
        for _ in handles:
            assert done.acquire(timeout=60), f"not every container exited: {exits}"
    for name in ("first", "second"):
        assert exits[name].code == 0, (name, outputs[name])
        # its own output, both vCPUs online
        assert b"".join(outputs[name]).decode().split() == [name, "0-1"]
    assert our_domains(f"hypervm-{TEST_TAG}-grp") == set()
    assert our_domains("hypervm-template-") == set()
