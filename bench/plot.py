"""The PNG next to latest.json: launch-latency distributions (log scale, every sample drawn)
and the probe latency against the number of idle VMs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(samples: Mapping[str, Sequence[float]], density: Sequence[Mapping[str, Any]],
         dest: Path, title: str, density_baseline: float | None = None) -> Path:
    names = [n for n, values in samples.items() if values]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    left.boxplot([samples[n] for n in names], vert=True, whis=(5, 95), showfliers=False)
    for i, name in enumerate(names, start=1):
        values = samples[name]
        left.scatter([i] * len(values), values, s=10, alpha=0.5)
    left.set_xticks(range(1, len(names) + 1), names, rotation=20)
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
