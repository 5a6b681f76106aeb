"""A foreground ``hypervm run`` ends its process without the interpreter's teardown once the
command returns (executor.cli.main.ENDS_NOW: ~8 ms of a cold run), its output flushed; other
commands, and a run with a thread the interpreter would wait for, exit as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def end(command: str, *, thread: bool = False) -> subprocess.CompletedProcess[str]:
    """A process whose ``hypervm COMMAND`` (a stand-in ``_main``) writes unflushed output and
    returns 3; an atexit handler prints 'teardown' if the interpreter's exit runs."""
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from executor.cli import main
        atexit.register(lambda: print("teardown", flush=True))
        def fake(argv):
            sys.stdout.write("output, not flushed\\n")
            if {thread!r}:
                threading.Thread(target=time.sleep, args=(0.3,)).start()
            return 3, {command!r}
        main._main = fake
        sys.argv = ["hypervm", {command!r}]
        sys.exit(main.main())
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, cwd=REPO, check=False)


def test_a_run_ends_without_the_interpreters_teardown_its_output_flushed() -> None:
    proc = end("run")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "output, not flushed\n", "")


@pytest.mark.parametrize("command", ["images", "pool", "doctor"])
def test_other_commands_exit_as_the_interpreter_does(command: str) -> None:
    proc = end(command)
    assert (proc.returncode, proc.stdout) == (3, "output, not flushed\nteardown\n")


def test_a_run_with_a_thread_still_running_waits_for_it_as_before() -> None:
    proc = end("run", thread=True)
    assert (proc.returncode, proc.stdout) == (3, "output, not flushed\nteardown\n")
