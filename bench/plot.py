"""The PNG next to latest.json: launch-latency distributions (log scale, every sample drawn),
the probe latency against the number of idle VMs, (with ``peers``) every peer figure of
hypervm and gVisor as a ratio to runc, and (with ``memory``) each idle sandbox's private MiB."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(samples: Mapping[str, Sequence[float]], density: Sequence[Mapping[str, Any]],
         dest: Path, title: str, density_baseline: float | None = None,
         peers: Mapping[str, Mapping[str, Any]] | None = None,
         memory: Mapping[str, float | None] | None = None) -> Path:
    names = [n for n, values in samples.items() if values]
    measured = {k: v for k, v in (memory or {}).items() if v is not None}
    ratios = [3, 2] + [3] * bool(peers) + [2] * bool(measured)
    fig, axes = plt.subplots(1, len(ratios), figsize=(max(12.0, 2.5 * sum(ratios)), 6),
                             width_ratios=ratios)
    left, right, *more = axes
    if peers:
        _peer_bars(more.pop(0), peers)
    if measured:
        _memory_bars(more.pop(0), measured)
    left.boxplot([samples[n] for n in names], vert=True, whis=(5, 95), showfliers=False)
    for i, name in enumerate(names, start=1):
        values = samples[name]
        left.scatter([i] * len(values), values, s=10, alpha=0.5)
    left.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("seconds (log)")
    left.set_title("launch latency (box: p5-p95, line: p50)")
    left.grid(True, which="both", axis="y", alpha=0.3)
    levels = [lv for lv in density if lv.get("probe_p50_s") is not None]
    right.plot([lv["idle_vms"] for lv in levels], [lv["probe_p50_s"] for lv in levels],
               marker="o")
    baseline = density_baseline or (levels[0]["probe_p50_s"] if levels else None)
    if baseline:
        right.axhline(2 * baseline, linestyle="--", color="grey", label="2 x no idle VMs")
        right.legend()
    right.set_xlabel("idle VMs running")
    right.set_ylabel("probe launch p50 (s)")
    right.set_title("launch latency vs idle VMs")
    right.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


PEER_KINDS = ("hypervm cold", "hypervm warm", "hypervm", "runsc")


def _peer_bars(ax: Any, peers: Mapping[str, Mapping[str, Any]]) -> None:
    """Grouped bars: each figure's ratio to runc (log scale; runc = 1), labelled with the value."""
    rows = list(peers)
    width = 0.25
    for k, kind in enumerate(PEER_KINDS):
        xs, ys, labels = [], [], []
        for i, name in enumerate(rows):
            times = peers[name].get("ratio_to_runc", {}).get(kind)
            if times:
                xs.append(i + (k - 1) * width)
                ys.append(times)
                labels.append(f"{peers[name][kind]:g}")
        if xs:
            bars = ax.bar(xs, ys, width, label=kind)
            ax.bar_label(bars, labels, fontsize=7, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, label="runc = 1")
    ax.set_xticks(range(len(rows)), rows, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("x runc (log; bar label: the value)")
    ax.set_title("hypervm and gVisor (ptrace) against runc")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)


def _memory_bars(ax: Any, memory: Mapping[str, float]) -> None:
    """Horizontal bars: each idle sandbox's private MiB (what one more costs the host)."""
    labels = list(memory)
    bars = ax.barh(range(len(labels)), [memory[k] for k in labels])
    ax.bar_label(bars, [f"{memory[k]:g}" for k in labels], fontsize=8, padding=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB")
    ax.set_title("idle private memory per sandbox")
    ax.grid(True, axis="x", alpha=0.3)
