"""bench/: the statistics and the result document's schema (pure, fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import profile, results, runfast, runtrue
from bench.stats import percentile, ratio, summarize


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0], 50) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(1, 21)), 95) == pytest.approx(19.05)
    assert percentile([5.0, 1.0], 0) == 1.0 and percentile([5.0, 1.0], 100) == 5.0


@pytest.mark.parametrize("bad", [[], [1.0]])
def test_percentile_rejects_no_samples_and_bad_q(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        percentile(bad, 50 if not bad else 101)


def test_summary_and_ratio() -> None:
    s = summarize([2.0, 1.0, 4.0, 3.0])
    assert (s.n, s.p50, s.min, s.max, s.mean) == (4, 2.5, 1.0, 4.0, 2.5)
    assert set(s.as_dict()) == {"n", "p50", "p95", "min", "max", "mean"}
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None


def complete_doc() -> dict[str, Any]:
    doc: dict[str, Any] = {k: 1.0 for k in results.REQUIRED_KEYS}
    doc["machine"] = {"cores": 2, "memory_mib": 24000, "accel": "tcg"}
    doc["commit"] = "0" * 40
    doc["warm_launch_p50_s"] = doc["warm_launch_p95_s"] = None
    doc["notes"] = {"warm_launch_p50_s": "no pool", "warm_launch_p95_s": "no pool"}
    for key in results.PER_KIND_KEYS:
        doc[key] = {"hypervm": 2.0, "runsc": 1.0, "runc": 0.5}
    doc["max_concurrent_vms_limit"] = "latency (CPU)"
    return doc


def test_issue_18_keys_are_required_besides_the_old_ones() -> None:
    old = {"raw_boot_p50_s", "container_p50_s", "cold_launch_p50_s", "warm_launch_p50_s",
           "run_true_p50_s", "idle_vm_rss_mib", "max_concurrent_vms", "import_mb_s",
           "cache_hit_extra_s", "machine", "commit"}
    new = {"runc_start_p50_s", "runsc_start_p50_s", "runsc_run_true_p50_s",
           "run_true_pool_p50_s", "snapshot_launch_p50_s", "warm_launch_ports_p50_s",
           "idle_vm_private_mib", "runsc_idle_pss_mib", "syscall_workload_s",
           "pipe_workload_s", "max_concurrent_vms_limit"}
    assert old | new <= set(results.REQUIRED_KEYS)
    doc = complete_doc()
    del doc["runsc_start_p50_s"]
    doc["snapshot_launch_p50_s"] = None
    problems = results.validate(doc)
    assert "missing key runsc_start_p50_s" in problems
    assert "snapshot_launch_p50_s is null without a note saying why" in problems


def test_per_kind_figures_name_each_sandbox() -> None:
    doc = complete_doc()
    doc["syscall_workload_s"] = {"hypervm": 2.0, "runc": "slow"}
    doc["pipe_workload_s"] = 3.0
    problems = results.validate(doc)
    assert "syscall_workload_s lacks runsc" in problems
    assert "syscall_workload_s.runc is not a number" in problems
    assert "pipe_workload_s is not an object by sandbox kind" in problems
    doc = complete_doc()
    doc["pipe_workload_s"] = {"hypervm": None, "runsc": 1.0, "runc": 0.4}
    assert results.validate(doc) == []


def test_peer_table_gives_every_figure_as_a_ratio_to_runc() -> None:
    from bench.peersuite import peer_lines, peer_table

    doc = complete_doc()
    doc.update(cold_launch_p50_s=4.0, warm_launch_p50_s=0.04, runsc_start_p50_s=0.2,
               runc_start_p50_s=0.04, network_mb_s={"hypervm": 30.0, "runsc": 150.0,
                                                    "runc": 300.0})
    table = peer_table(doc)
    start = table["start p50 (s)"]["ratio_to_runc"]
    assert start == {"hypervm cold": 100.0, "hypervm warm": 1.0, "runsc": 5.0}
    assert table["syscall workload (s)"]["ratio_to_runc"] == {"hypervm": 4.0, "runsc": 2.0}
    assert table["network (MB/s)"]["ratio_to_runc"]["hypervm"] == 0.1
    doc["peers"] = table
    text = "\n".join(peer_lines(doc))
    assert "4 (100x)" in text and "0.2 (5x)" in text and "runc" in text


def test_workload_timing_comes_from_the_sandbox_clock() -> None:
    from bench.peers import inner_seconds

    assert inner_seconds("noise\nT 12.50 14.75\n") == 2.25
    with pytest.raises(RuntimeError, match="no timing line"):
        inner_seconds("T 1.0\n")


def test_oci_spec_runs_the_command_on_the_read_only_root(tmp_path: Path) -> None:
    import shutil

    from bench.peers import spec

    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (make deps installs it)")
    config = spec(tmp_path, ("sh", "-c", "true"), env=("A=1",))
    assert config["root"] == {"path": str(tmp_path), "readonly": True}
    assert config["process"]["args"] == ["sh", "-c", "true"]
    assert not config["process"]["terminal"] and "A=1" in config["process"]["env"]
    assert any(m["destination"] == "/tmp" and m["type"] == "tmpfs" for m in config["mounts"])
    kinds = {n["type"] for n in config["linux"]["namespaces"]}
    assert "network" in kinds
    host = spec(tmp_path, ("true",), host_network=True)
    assert "network" not in {n["type"] for n in host["linux"]["namespaces"]}


def test_a_complete_document_validates_and_round_trips(tmp_path: Path) -> None:
    doc = complete_doc()
    assert results.validate(doc) == []
    path = results.write(doc, tmp_path / "r" / "latest.json")
    assert json.loads(path.read_text()) == doc


def test_validation_names_what_is_wrong() -> None:
    doc = complete_doc()
    del doc["import_mb_s"]
    doc["idle_vm_rss_mib"] = None
    doc["cold_launch_p50_s"] = "fast"
    doc["machine"] = {"cores": 2, "memory_mib": 1, "accel": "hvf"}
    problems = results.validate(doc)
    assert "missing key import_mb_s" in problems
    assert "idle_vm_rss_mib is null without a note saying why" in problems
    assert "cold_launch_p50_s is not a number" in problems
    assert any("machine.accel" in p for p in problems)


def test_targets_relative_and_absolute() -> None:
    doc = complete_doc()
    doc.update(raw_boot_p50_s=2.0, cold_launch_p50_s=2.5, idle_vm_rss_mib=100.0,
               max_concurrent_vms=21, cache_hit_extra_s=0.004)
    targets = results.check_targets(doc)
    assert targets["cold_launch_p50_s"]["limit"] == 2.6 and targets["cold_launch_p50_s"]["met"]
    assert targets["idle_vm_rss_mib"]["met"] is False
    assert targets["max_concurrent_vms"]["met"] is True
    assert targets["cache_hit_extra_s"]["met"] is True
    assert targets["warm_launch_p50_s"]["met"] is None


def test_console_profile_finds_init_and_gaps() -> None:
    console = ("[    0.000000] Linux version 6.1\n[    0.500000] virtio-pci enabling\n"
               "noise from init\n[    0.900000] ACPI: LNKB\n[    1.300000] Run /init as init\n")
    lines = profile.kernel_lines(console)
    assert [t for t, _ in lines] == [0.0, 0.5, 0.9, 1.3]
    gaps = profile.largest_gaps(lines, top=2)
    assert gaps[0]["seconds"] == 0.5 and gaps[0]["before"] == "virtio-pci enabling"
    boot = profile.RawBoot(total_s=2.0, qemu_s=0.4, guest_s=1.6, console=console)
    out = profile.boot_profile(boot)
    assert out["kernel_to_run_init_s"] == 1.3
    assert out["firmware_early_and_init_to_ready_s"] == pytest.approx(0.3)


def test_table_shows_every_headline_and_the_target_verdicts() -> None:
    from bench.cli import ROWS, table

    doc = complete_doc()
    doc["targets"] = results.check_targets(doc)
    doc["ratios"] = {"cold_launch_p50 / raw_boot_p50": 1.0}
    text = table(doc)
    assert all(label in text for label, _, _ in ROWS)
    assert "warm launch p50" in text and "null" in text
    assert "cold_launch_p50 / raw_boot_p50" in text
    assert "target warm_launch_p50_s <= 0.06: not measured" in text


def test_cold_launch_phases_from_the_executor_log() -> None:
    from bench.launch import phases

    log = (
        '2026-11-24 21:56:14,059 INFO MainThread x: update t: {"state": "TASK_STARTING"}\n'
        "2026-11-24 21:56:14,199 INFO boot vmimage.images.store: r:1: sha256:7 (1 layers)\n"
        "2026-11-24 21:56:14,726 INFO boot executor.libvirt.hypervisor: started hypervm-b "
        "in 0.45 s\n"
        "2026-11-24 21:56:17,930 INFO boot executor.vm: hypervm-b ready in 3.68 s (tcg)\n"
        '2026-11-24 21:56:18,040 INFO MainThread x: update t: {"state": "TASK_RUNNING"}\n')
    assert phases(log) == {"starting->image": 0.14, "image->created": 0.527,
                           "created->ready": 3.204, "ready->running": 0.11}
    assert phases(log.replace("ready in", "up in")) == {
        "starting->image": 0.14, "image->created": 0.527, "created->running": 3.314}


def test_warm_launch_phases_from_the_executor_log() -> None:
    from bench.launch import phases

    log = (
        '2026-11-24 21:56:14,059 INFO MainThread x: update t: {"state": "TASK_STARTING"}\n'
        "2026-11-24 21:56:14,199 INFO boot vmimage.images.store: r:1: sha256:7 (1 layers)\n"
        "2026-11-24 21:56:14,300 INFO boot executor.pool.adopt: p-0: warm VM hypervm-pool-1 "
        "ready in 0.101 s\n"
        '2026-11-24 21:56:14,350 INFO MainThread x: update t: {"state": "TASK_RUNNING"}\n')
    assert phases(log) == {"starting->image": 0.14, "image->claimed": 0.101,
                           "claimed->running": 0.05}
    image_vm = log.replace("hypervm-pool-1 ready", "hypervm-pool-1 (layers attached) ready")
    assert phases(image_vm) == phases(log)


def test_py_spy_stacks_summarized_by_frame_and_main_thread() -> None:
    from bench.profilerun import collapsed_summary

    raw = ("<module> (hypervm:6);main (m.py:1);boot (vm.py:2) 30\n"
           "<module> (hypervm:6);main (m.py:1);poweroff (vm.py:9) 10\n"
           "Thread.run (threading.py:982);loop (h.py:74) 60\n"
           "garbage line\n")
    out = collapsed_summary(raw, top=10)
    assert out["samples"] == 100 and out["main_thread_samples"] == 40
    main = {r["frame"]: r["share"] for r in out["main_thread"]}
    assert main["boot (vm.py:2)"] == 0.75 and main["main (m.py:1)"] == 1.0
    assert out["self"][0] == {"frame": "loop (h.py:74)", "samples": 60, "share": 0.6}
    assert {r["frame"]: r["share"] for r in out["inclusive"]}["main (m.py:1)"] == 0.4


SMAPS = """\
55d0c0000000-55d0c0100000 rw-p 00000000 00:00 0                          [heap]
Rss:                1024 kB
Private_Clean:         0 kB
Private_Dirty:      1024 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0008000000 rw-s 00000000 00:01 4918 /memfd:memory-backend-memfd (deleted)
Private_Clean:       100 kB
Private_Dirty:     14000 kB
VmFlags: rd wr sh mr mw me ms
7f1000000000-7f1040000000 rwxp 00000000 00:00 0
Private_Dirty:      3072 kB
VmFlags: rd wr ex mr mw me ac nh
7f2000000000-7f2008000000 rw-p 00000000 00:00 0
Private_Dirty:      2048 kB
VmFlags: rd wr mr mw me ac mg
7f3000000000-7f3000200000 rw-p 00000000 00:00 0
Private_Dirty:       512 kB
7f3000400000-7f3000600000 rw-p 00000000 00:00 0
Private_Dirty:       512 kB
7f4000000000-7f4000001000 r--p 00000000 fe:00 1 /usr/bin/qemu
Private_Clean:         0 kB
"""


def test_private_by_mapping_names_guest_ram_translations_and_sums_alike_mappings() -> None:
    from bench.vmenv import private_by_mapping_of

    rows = private_by_mapping_of(SMAPS)
    assert rows == [
        {"name": "guest RAM (memfd)", "private_mib": 13.77},
        {"name": "TCG translation buffer", "private_mib": 3.0},
        {"name": "guest RAM (anonymous, mergeable)", "private_mib": 2.0},
        {"name": "[heap]", "private_mib": 1.0},
        {"name": "[anon 2.0 MiB]", "private_mib": 1.0},
    ]
    assert len(private_by_mapping_of(SMAPS, top=2)) == 2


def test_runfast_puts_a_baseline_s_cold_run_beside_the_raw_boot(tmp_path: Path) -> None:
    """``bench.runfast --baseline DIR``: that tree's cold run, its own ratio to the raw boot,
    and its ``hypervm`` runs with DIR first on the import path."""
    out = runfast.summary({"raw boot (cold host)": [1.0, 1.0], "hypervm run true": [1.2, 1.3],
                           "baseline hypervm run true": [1.3, 1.3]})
    assert out["cold run true / raw boot"] == 1.25
    assert out["baseline cold run true / raw boot"] == 1.3
    assert out["cold run true - raw boot, paired p50 (s)"] == 0.25
    assert out["cold run true - baseline, paired p50 (s)"] == -0.05
    assert runfast.summary({"load: cold phase": [1.0, 3.0]})["load p50"] == {"cold phase": 2.0}
    assert "baseline cold run true / raw boot" not in runfast.summary(
        {"raw boot (cold host)": [1.0], "hypervm run true": [1.2]})
    assert runtrue.tree_env(tmp_path)["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert runtrue.tree_env()["PYTHONPATH"].split(os.pathsep)[0] == str(runtrue.REPO)
