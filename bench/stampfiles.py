"""The stamp files a stamped CLI or executor writes (bench/stamps/sitecustomize.py), read as
samples: a leaf module, so bench.coldphase and bench.warmfast both use it without importing
each other (through bench.suite)."""

from __future__ import annotations

from pathlib import Path


def read_stamps(out: Path, samples: dict[str, list[float]], label: str = "") -> None:
    """Each stamp line of the launch's executor (bench/stamps) as samples (named after
    ``label``, e.g. ``"baseline "``), its first call of each function only; the files are
    removed."""
    seen: set[str] = set()
    for path in sorted(out.glob("t-*.txt")):
        for line in path.read_text().splitlines():
            name, began, took = line.split()
            if name not in seen:
                seen.add(name)
                samples.setdefault(f"{label}stamp: {name} began", []).append(float(began) / 1000)
                samples.setdefault(f"{label}stamp: {name} took", []).append(float(took) / 1000)
        path.unlink()
