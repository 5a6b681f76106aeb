"""Build progress read from ninja's and Kbuild's output (issue 17, part 7)."""

from __future__ import annotations

import sys
from pathlib import Path

from vmimage.kernel import store
from vmimage.progress import StepMeter


def test_ninja_lines_report_every_five_percent() -> None:
    said: list[str] = []
    meter = StepMeter("building HyperQEMU", said.append)
    for n in range(1, 201):
        meter.line(f"[{n}/200] Compiling C object libqemu-{n}.o\n".encode())
        meter.line(b"warning: something unrelated\n")
    assert len(said) == 20
    assert said[0] == "building HyperQEMU: 5% (10 of 200 steps)"
    assert said[-1] == "building HyperQEMU: 100% (200 of 200 steps)"


def test_kbuild_lines_count_against_an_estimate_and_stop_at_99() -> None:
    said: list[str] = []
    meter = StepMeter("building the HyperKernel", said.append, total=100)
    lines = [b"  CC      kernel/fork.o\n", b"  LD      vmlinux.o\n", b"  AR      lib/lib.a\n",
             b"make[1]: Entering directory '/x'\n", b"  SYNC    include/config/auto.conf\n"]
    for _ in range(60):
        for raw in lines:
            meter.line(raw)
    assert meter.done == 240
    assert said[0] == "building the HyperKernel: 5% (5 of ~100 steps)"
    assert said[-1] == "building the HyperKernel: 99% (99 of ~100 steps)"
    assert len(said) == 20


def test_run_logged_streams_into_the_log_and_the_meter(tmp_path: Path) -> None:
    said: list[str] = []
    log = tmp_path / "build.log"
    script = "for i in 1 2 3 4; do echo \"[$i/4] step $i\"; done; echo done >&2"
    store.run_logged(["sh", "-c", script], log, meter=StepMeter("b", said.append, every=50))
    assert said == ["b: 50% (2 of 4 steps)", "b: 100% (4 of 4 steps)"]
    assert log.read_text().splitlines()[1:] == [f"[{i}/4] step {i}" for i in range(1, 5)] + [
        "done"]


def test_pull_reports_each_layer_once_when_complete(tmp_path: Path) -> None:
    from vmimage.images.manifest import Descriptor
    from vmimage.images.pull_progress import LayerLines

    a = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + "a" * 64, 3)
    b = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + "b" * 64, 2_000_000)
    said: list[str] = []
    lines = LayerLines("img", tmp_path, [a, b], said.append)
    lines()
    (tmp_path / b.hex).write_bytes(b"x" * 10)  # still arriving
    (tmp_path / a.hex).write_bytes(b"abc")
    lines()
    (tmp_path / b.hex).write_bytes(b"x" * 2_000_000)
    lines()
    lines()
    assert said == ["img: layer 1 of 2 fetched (sha256:aaaaaaaaaaaa, 0.0 MB)",
                    "img: layer 2 of 2 fetched (sha256:bbbbbbbbbbbb, 2.0 MB)"]


def test_quiet_pulls_draw_no_skopeo_bars(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    from hypervm.config import config_from_env
    from vmimage.images.store import ImageStore

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path)})
    assert ImageStore(cfg, progress=print)._tty
    assert not ImageStore(cfg, progress=None)._tty
