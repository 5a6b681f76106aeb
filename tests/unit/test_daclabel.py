"""libvirt's QEMU user kept per libvirtd (executor.libvirt.daclabel): asked once per daemon,
asked again when the daemon or its qemu.conf changed, and never taken from a file someone
other than root could have written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from executor.libvirt import daclabel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the kept label is root's only")

LABEL = (64055, 64055)
DAEMON = [4242, 1000, [1, 0, 5], [2, 100, 6]]


class Asker:
    def __init__(self, label: tuple[int, int] | None = LABEL) -> None:
        self.label = label
        self.calls = 0

    def __call__(self) -> tuple[int, int] | None:
        self.calls += 1
        return self.label


def _label(path: Path, ask: Asker, daemon: list[object] | None = DAEMON,
           uri: str = daclabel.SYSTEM_URI) -> tuple[int, int] | None:
    return daclabel.qemu_label(uri, ask, path, key=lambda: daemon)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    return directory / "dac.json"


def test_the_same_daemon_is_asked_once(cache: Path) -> None:
    ask = Asker()
    assert _label(cache, ask) == LABEL
    assert _label(cache, ask) == LABEL
    assert _label(cache, Asker(None)) == LABEL  # the kept one, not a new question
    assert ask.calls == 1
    assert cache.stat().st_mode & 0o777 == 0o644


def test_no_dac_is_kept_too(cache: Path) -> None:
    ask = Asker(None)
    assert _label(cache, ask) is None
    assert _label(cache, ask) is None
    assert ask.calls == 1


def test_another_daemon_or_qemu_conf_is_asked_again(cache: Path) -> None:
    _label(cache, Asker())
    restarted = [4242, 2000, [1, 0, 5], [2, 100, 6]]  # same pid, another start time
    ask = Asker((1, 1))
    assert _label(cache, ask, restarted) == (1, 1)
    edited = [*restarted[:3], [2, 101, 7]]
    assert _label(cache, ask, edited) == (1, 1)
    assert ask.calls == 2
    assert _label(cache, ask, edited) == (1, 1)
    assert ask.calls == 2


def test_an_unknown_daemon_or_uri_is_always_asked(cache: Path) -> None:
    ask = Asker()
    for _ in range(2):
        assert _label(cache, ask, daemon=None) == LABEL
        assert _label(cache, ask, uri="qemu:///session") == LABEL
    assert ask.calls == 4
    assert not cache.exists()


@pytest.mark.parametrize("tamper", ["group-writable", "not-root", "symlink", "dir-writable",
                                    "bad-label"])
def test_a_file_only_root_could_write_is_believed(cache: Path, tmp_path: Path,
                                                  tamper: str) -> None:
    """A label another user could have planted (e.g. no DAC: VMs would run as libvirt's
    shared user) is never taken: libvirt is asked."""
    planted = {"daemon": DAEMON, "label": None}
    cache.write_text(json.dumps(planted))
    os.chmod(cache, 0o644)
    if tamper == "group-writable":
        os.chmod(cache, 0o664)
    elif tamper == "not-root":
        os.chown(cache, 1000, 1000)
    elif tamper == "symlink":
        elsewhere = tmp_path / "elsewhere.json"
        cache.rename(elsewhere)
        cache.symlink_to(elsewhere)
    elif tamper == "dir-writable":
        os.chmod(cache.parent, 0o777)
    else:
        cache.write_text(json.dumps({"daemon": DAEMON, "label": [-1, "x"]}))
    ask = Asker()
    assert _label(cache, ask) == LABEL
    assert ask.calls == 1


def _fake_proc(root: Path, pid: int, comm: str, started: int) -> Path:
    proc = root / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    fields = ["S"] + ["0"] * 18 + [str(started)] + ["0"] * 5
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")
    return proc


def test_daemon_key_names_a_live_libvirtd_and_its_configuration(tmp_path: Path) -> None:
    pid_file, sock, modular, conf = (tmp_path / n for n in ("pid", "sock", "vq-sock", "conf"))
    pid_file.write_text("4242\n")
    sock.write_text("")
    conf.write_text("user = 'libvirt-qemu'\n")
    proc = _fake_proc(tmp_path, 4242, "libvirtd", 777)

    def key() -> list[object] | None:
        return daclabel.daemon_key(pid_file, sock, modular, conf, proc)

    first = key()
    assert first is not None and first[:2] == [4242, 777]
    conf.write_text("user = 'root'\n")
    assert key() != first  # qemu.conf edited: another key
    modular.write_text("")
    assert key() is None  # the client may talk to virtqemud instead
    modular.unlink()
    (proc / "4242" / "comm").write_text("bash\n")
    assert key() is None  # the pid is no libvirtd (a stale pid file)
    pid_file.write_text("5")
    assert key() is None  # no such process
