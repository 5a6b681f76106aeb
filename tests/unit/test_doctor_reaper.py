"""``hypervm doctor``'s reaper check: an exited QEMU reaped late holds libvirtd's teardown."""

from __future__ import annotations

import pytest

from executor.cli import doctor_reaper


def test_orphan_reaping_is_measured() -> None:
    seconds, _ = doctor_reaper.orphan_reaping()
    assert seconds is not None and 0.0 <= seconds <= doctor_reaper.MAX_WAIT_S


@pytest.mark.parametrize(("seconds", "warn"), [(0.0, False), (0.2, False), (1.8, True),
                                               (None, True)])
def test_a_late_reaper_is_a_warning_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                 seconds: float | None, warn: bool) -> None:
    monkeypatch.setattr(doctor_reaper, "libvirtd_parent", lambda: 1)
    monkeypatch.setattr(doctor_reaper, "orphan_reaping", lambda: (seconds, 1))
    check = doctor_reaper.check_reaper()
    assert check.ok and check.warn is warn
    assert ("catatonit -- libvirtd" in check.detail) is warn


def test_libvirtd_under_its_own_reaper_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_reaper, "libvirtd_parent", lambda: 4242)
    monkeypatch.setattr(doctor_reaper, "orphan_reaping",
                        lambda: pytest.fail("no measurement needed"))
    check = doctor_reaper.check_reaper()
    assert check.ok and not check.warn and "pid 4242" in check.detail
