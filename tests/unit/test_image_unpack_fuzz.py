"""Property: whatever a layer tar holds, unpacking writes nothing outside the layer directory."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hypervm.errors import ImageError
from vmimage.images.unpack import unpack_layer

COMPONENTS = ["a", "b", "..", ".", "", ".wh.a", ".wh.", ".wh..wh..opq", "c"]
OUTSIDE = "OUTSIDE"  # replaced by the absolute path of a directory outside the layer
TARGETS = ["a", "../a", "../../..", "/", f"{OUTSIDE}", f"{OUTSIDE}/x", "a/b", "/etc/passwd"]

ROOT_PROBES = [f"/{c}" for c in COMPONENTS if c not in ("", ".", "..")] + ["/tmp/a", "/tmp/b"]
ROOT_BEFORE = {p for p in ROOT_PROBES if os.path.lexists(p)}

names = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("/".join)
entries = st.lists(st.tuples(names, st.sampled_from(["file", "dir", "sym", "hard"]),
                             st.sampled_from(TARGETS)), max_size=12)


def build(items: list[tuple[str, str, str]], outside: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, target in items:
            if not name:
                continue
            info = tarfile.TarInfo(name)
            target = target.replace(OUTSIDE, str(outside))
            if kind == "file":
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE}[kind]
            info.mode = 0o755
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries)
@example([(".", "sym", OUTSIDE), ("x", "file", "")])
@example([("", "sym", "/"), ("a", "file", "")])
@example([("a", "sym", "/"), ("a/b", "file", "")])
@example([(".wh.", "file", ""), ("a", "file", "")])
def test_nothing_lands_outside(items: list[tuple[str, str, str]]) -> None:
    work = Path(tempfile.mkdtemp(prefix="unpack-fuzz-"))
    try:
        outside = work / "outside"
        outside.mkdir()
        (outside / "x").write_text("keep")
        blob = work / "blob"
        blob.write_bytes(build(items, outside))
        dest = work / "layer"
        dest.mkdir()
        try:
            unpack_layer("fuzz:1", "sha256:" + "f" * 64, blob, dest)
        except ImageError as e:
            assert "rejected" in str(e) or "not a valid" in str(e), e
        assert sorted(os.listdir(work)) == ["blob", "layer", "outside"]
        assert os.listdir(outside) == ["x"] and (outside / "x").read_text() == "keep"
        # links to "/" or "../../.." must not have let anything into the host's root
        assert {p for p in ROOT_PROBES if os.path.lexists(p)} == ROOT_BEFORE
    finally:
        shutil.rmtree(work)
