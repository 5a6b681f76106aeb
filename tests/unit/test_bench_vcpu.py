"""bench.vcpu: a QEMU's vCPU thread found by the name QEMU gives it, its time on a CPU and
waiting for one (schedstat); bench.runfast pairs a stamped cold run's with its raw boot's."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bench import coldphase, runfast, vcpu


@contextmanager
def a_thread_named(name: str) -> Iterator[None]:
    named, done = threading.Event(), threading.Event()

    def run() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name)
        named.set()
        sum(range(200_000))  # some time on a CPU
        done.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert named.wait(10)
        yield
    finally:
        done.set()
        thread.join()


def test_the_vcpu_thread_is_found_by_its_name() -> None:
    assert vcpu.vcpu_s(os.getpid()) is None  # no thread named as a vCPU
    with a_thread_named("CPU 0/TCG"):
        got = vcpu.vcpu_s(os.getpid())
        threads = vcpu.threads_cpu_s(os.getpid())
    assert got is not None
    on_cpu, waiting = got
    assert on_cpu > 0 and waiting >= 0
    assert threads["CPU 0/TCG"] >= on_cpu
    assert sum(threads.values()) > on_cpu  # the main thread's too


def test_a_process_that_is_gone_has_no_vcpu() -> None:
    assert vcpu.vcpu_s(2**22 + 1) is None  # above pid_max's ceiling


def test_runfast_pairs_the_cold_runs_vcpu_with_the_raw_boots() -> None:
    samples = {coldphase.RAW: [0.6, 0.7, 0.6], coldphase.RUN: [0.8, 0.9, 0.8],
               coldphase.RAW_VCPU: [0.50, 0.60, 0.55], coldphase.RUN_VCPU: [0.52, 0.61, 0.60]}
    out = runfast.summary(samples)
    assert out["cold run vCPU at READY - raw boot's, paired p50 (s)"] == 0.02
    del samples[coldphase.RUN_VCPU]  # not stamped: no such line
    assert "cold run vCPU at READY - raw boot's, paired p50 (s)" not in runfast.summary(samples)
