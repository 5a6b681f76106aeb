"""dpkg-query's answers kept between processes (vmimage.kernel.dpkg_cache): a cold boot asks
dpkg only when its database changed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vmimage import boot
from vmimage.kernel import dpkg_cache, store

#: what the fake dpkg knows: package → field → value
PACKAGES = {"linux-source-6.1": {"Version": "6.1.1-1", "source:Version": "6.1.1-1"},
            "qemu-system-x86": {"Version": "1:7.2+b3", "source:Version": "1:7.2"}}


def answer(argv: list[str]) -> str:
    """dpkg-query -W -f=... PACKAGE... of the fake database."""
    fields = [f.strip("${}") for f in argv[2].removeprefix("-f=").split("\\t")[2:]]
    fields[-1] = fields[-1].removesuffix("\\n").strip("${}")
    return "".join(f"{p}:amd64\tinstall ok installed\t"
                   + "\t".join(PACKAGES[p][f] for f in fields) + "\n"
                   for p in argv[3:] if p in PACKAGES)


@pytest.fixture
def dpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A fake dpkg database and dpkg-query; the calls made, one per new process (the
    per-process memo forgotten before each test and by :func:`new_process`)."""
    database = tmp_path / "dpkg"
    (database / "updates").mkdir(parents=True)
    (database / "status").write_text("Package: linux-source-6.1\n")
    monkeypatch.setattr(dpkg_cache, "DPKG_DIR", database)
    monkeypatch.setattr(dpkg_cache.database_identity, "__defaults__", (database,))
    calls: list[list[str]] = []

    def fake_run(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=answer(argv), stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)  # the module store imports
    store.forget_package_versions()
    yield calls
    store.forget_package_versions()


def new_process() -> None:
    store.forget_package_versions()


def test_a_later_process_asks_no_dpkg_while_its_database_is_unchanged(
        dpkg: list[list[str]], tmp_path: Path) -> None:
    cache = tmp_path / "run" / dpkg_cache.CACHE_NAME
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert len(dpkg) == 1 and cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp left
    new_process()
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert len(dpkg) == 1


def test_a_changed_database_is_asked_again(dpkg: list[list[str]], tmp_path: Path) -> None:
    cache = tmp_path / dpkg_cache.CACHE_NAME
    store.package_versions(boot.PACKAGE_FIELDS, cache)
    database = tmp_path / "dpkg"
    # dpkg replaces its status file by a rename on every change (a new inode)
    (database / "status-new").write_text("Package: linux-source-6.1\nVersion: 2\n")
    os.replace(database / "status-new", database / "status")
    new_process()
    store.package_versions(boot.PACKAGE_FIELDS, cache)
    assert len(dpkg) == 2
    # a pending change in dpkg's journal changes the answers too
    (database / "updates" / "0001").write_text("Package: qemu-system-x86\n")
    new_process()
    store.package_versions(boot.PACKAGE_FIELDS, cache)
    assert len(dpkg) == 3


def test_a_pair_not_cached_yet_is_asked_and_added(dpkg: list[list[str]], tmp_path: Path) -> None:
    cache = tmp_path / dpkg_cache.CACHE_NAME
    store.package_versions([("linux-source-6.1", "Version")], cache)
    new_process()
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert dpkg[-1][-1:] == ["qemu-system-x86"]  # only the missing one asked
    new_process()
    store.package_versions(boot.PACKAGE_FIELDS, cache)
    assert len(dpkg) == 2


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"database": 1}', b'{"fields": {}}',
    b"{" + b" " * (dpkg_cache.MAX_BYTES + 10) + b"}",
])
def test_a_broken_cache_file_is_ignored(dpkg: list[list[str]], tmp_path: Path,
                                        content: bytes) -> None:
    cache = tmp_path / dpkg_cache.CACHE_NAME
    cache.write_bytes(content)
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert len(dpkg) == 1
    new_process()  # and replaced by a good one
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert len(dpkg) == 1


def test_values_of_the_wrong_shape_are_not_taken(dpkg: list[list[str]], tmp_path: Path) -> None:
    cache = tmp_path / dpkg_cache.CACHE_NAME
    identity = dpkg_cache.database_identity()
    cache.write_text(json.dumps({"database": identity, "fields": {
        "linux-source-6.1\tVersion": ["6.1"], "qemu-system-x86\tsource:Version": 7}}))
    assert store.package_versions(boot.PACKAGE_FIELDS, cache) == ["6.1.1-1", "1:7.2"]
    assert len(dpkg) == 1


def test_without_a_dpkg_database_dpkg_is_asked_every_time(
        dpkg: list[list[str]], tmp_path: Path) -> None:
    cache = tmp_path / dpkg_cache.CACHE_NAME
    (tmp_path / "dpkg" / "status").unlink()
    for _ in range(2):
        new_process()
        store.package_versions(boot.PACKAGE_FIELDS, cache)
    assert len(dpkg) == 2 and not cache.exists()
