"""The executor shortens CPython's GIL switch interval (executor.mesos.main.GIL_SWITCH_S): a
warm launch hands off between threads, and a woken thread waits for the GIL up to that long
while another runs Python (DEVELOPERS.md, "A warm START in the guest")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from executor.mesos import main as executor_main

REPO = Path(__file__).resolve().parents[2]


def test_the_executor_runs_with_a_short_switch_interval(tmp_path: Path) -> None:
    code = ("import sys\nfrom executor.mesos.main import main\n"
            "rc = main([])\nprint(rc, sys.getswitchinterval())\n")
    # no Mesos environment: the executor stops at its settings, after setting the interval
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
           "MESOS_SANDBOX": str(tmp_path), "HYPERVM_CONFIG": str(tmp_path / "none.toml")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out[0] == "1"
    assert float(out[1]) == executor_main.GIL_SWITCH_S
    assert executor_main.GIL_SWITCH_S < 0.005  # CPython's default
