"""``hypervm run`` inputs parsed as docker does: -v, --env-file, -e KEY, --cpus, --memory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.cli import run_inputs
from executor.cli.main import build_parser
from hypervm.errors import InvalidSpec


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse to (pytest's tmp_path is below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="hypervm-unit-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_volume_read_only_and_read_write(open_dir: Path) -> None:
    tmp_path = open_dir
    ro = run_inputs.parse_volume(f"{tmp_path}:/data:ro")
    rw = run_inputs.parse_volume(f"{tmp_path}:/data/")
    assert (ro.type, ro.source, ro.destination, ro.readonly) == ("9p", tmp_path, "/data", True)
    assert (rw.destination, rw.readonly, rw.owned) == ("/data", False, False)


def test_volume_resolves_links_to_the_real_directory(open_dir: Path) -> None:
    tmp_path = open_dir
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    mount = run_inputs.parse_volume(f"{tmp_path}/link:/x")
    assert mount.source == tmp_path / "real"


@pytest.mark.parametrize(("spec", "message"), [
    ("FILE:/x", "is not a directory"),
    ("/nonexistent-dir-xyz:/x", "does not exist"),
    ("named:/x", "is not a host path"),
    ("TMP:relative", "not an absolute container path"),
    ("TMP:/a/../b", "not an absolute container path"),
    ("TMP:/x:rx", r"is not HOST:CONTAINER\[:ro\]"),
    ("TMP", r"is not HOST:CONTAINER\[:ro\]"),
])
def test_bad_volume_names_the_field(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "f").write_text("x")
    spec = spec.replace("FILE", str(tmp_path / "f")).replace("TMP", str(tmp_path))
    with pytest.raises(InvalidSpec, match=message) as info:
        run_inputs.parse_volume(spec)
    assert info.value.field == "--volume"


def test_same_destination_twice_is_refused(open_dir: Path) -> None:
    tmp_path = open_dir
    with pytest.raises(InvalidSpec, match="mounted twice"):
        run_inputs.volumes([f"{tmp_path}:/d", f"{tmp_path}:/d:ro"])


def test_env_key_alone_takes_our_value() -> None:
    environ = {"HOME": "/root", "EMPTY": ""}
    assert run_inputs.env_items(["HOME", "A=b=c", "UNSET", "EMPTY"], environ) == [
        "HOME=/root", "A=b=c", "EMPTY="]
    with pytest.raises(InvalidSpec, match="--env"):
        run_inputs.env_items(["=x"], environ)


def test_env_file_then_flags_later_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\n\nA=1\nB=\"quoted\"\nUSER\nC=from-file\n")
    items = run_inputs.environment(["C=flag", "D=4"], [env_file], {"USER": "bob"})
    assert items == ("A=1", 'B="quoted"', "USER=bob", "C=flag", "D=4")


def test_bad_env_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="--env-file: cannot read"):
        run_inputs.env_file_items(tmp_path / "missing.env", {})
    bad = tmp_path / "bad.env"
    bad.write_text("1BAD=x\n")
    with pytest.raises(InvalidSpec, match=f"--env-file: {bad}"):
        run_inputs.env_file_items(bad, {})


@pytest.mark.parametrize(("text", "mib"), [
    ("512", 512), ("512m", 512), ("512M", 512), ("1g", 1024), ("1.5G", 1536), ("2048k", 2),
    ("1GiB", 1024), ("256mb", 256)])
def test_memory_sizes(text: str, mib: int) -> None:
    assert run_inputs.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "-1g", "1x", "1000k"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(InvalidSpec, match="--memory"):
        run_inputs.parse_memory(text)


def test_fractional_cpus_are_a_quota() -> None:
    assert run_inputs.parse_cpus("1.5") == (2, 1.5)
    assert run_inputs.parse_cpus("0.5") == (1, 0.5)
    assert run_inputs.parse_cpus("2") == (2, None)
    res = run_inputs.resources("1.5", "1g")
    assert (res.cpus, res.cpu_limit, res.memory_mib) == (2, 1.5, 1024)
    for bad in ("0", "-1", "nan", "inf", "two"):
        with pytest.raises(InvalidSpec, match="--cpus"):
            run_inputs.parse_cpus(bad)


def test_run_flags_parse_as_docker_users_expect(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["run", "-v", f"{tmp_path}:/d:ro", "--volume", f"{tmp_path}:/e", "-e", "HOME",
         "--env-file", "x.env", "--cpus", "1.5", "--memory", "512m", "--pull", "never",
         "img", "--", "true"])
    assert args.volume == [f"{tmp_path}:/d:ro", f"{tmp_path}:/e"]
    assert (args.env, args.env_file) == (["HOME"], [Path("x.env")])
    assert (args.cpus, args.memory, args.pull, args.image) == ("1.5", "512m", "never", "img")


def test_pull_never_refuses_an_uncached_image(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from executor.cli import main as cli

    monkeypatch.setenv("HYPERVM_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("HYPERVM_CONFIG", str(tmp_path / "none.toml"))
    status = cli.main(["run", "--pull", "never", "127.0.0.1:1/nothing:1", "--", "true"])
    err = capsys.readouterr().err
    assert status == 125
    assert "is not in the image cache and --pull never forbids pulling" in err
    assert err.count("\n") == 1
    assert os.listdir(tmp_path / "images")  # the cache was looked at, nothing was pulled


def test_acl_entry_added_and_taken_off(tmp_path: Path) -> None:
    import stat

    from executor import volume_access as va

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    mounts = [run_inputs.Mount(type="9p", destination="/d", source=shared, readonly=False)]
    with va.granted(4242, mounts):
        entries = va.acl_entries(os.getxattr(shared, va.ACL_XATTR), 0)
        assert (va._USER, 7, 4242) in entries
        assert stat.S_IMODE(shared.stat().st_mode) == 0o775  # the mask shows as group bits
    assert va.ACL_XATTR not in os.listxattr(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_acl_read_only_and_existing_entries() -> None:
    from executor import volume_access as va

    base = va.acl_entries(None, 0o750)
    assert base == [(va._USER_OBJ, 7, va._UNDEFINED_ID), (va._GROUP_OBJ, 5, va._UNDEFINED_ID),
                    (va._OTHER, 0, va._UNDEFINED_ID)]
    raw = va.with_user(base, 7, 5)
    again = va.with_user(va.acl_entries(raw, 0), 7, 5)  # the same uid twice: one entry
    entries = va.acl_entries(again, 0)
    assert [e for e in entries if e[0] == va._USER] == [(va._USER, 5, 7)]
    assert (va._MASK, 5, va._UNDEFINED_ID) in entries


def test_volume_below_a_private_directory_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "a" / "b"
    private.mkdir(parents=True)
    (tmp_path / "a").chmod(0o700)
    with pytest.raises(InvalidSpec, match="cannot be traversed by the VM's own user"):
        run_inputs.parse_volume(f"{private}:/x")
