"""What TCG guests are told of their clocks on their command line (vmimage.guestclock): the
APIC timer's clock always; the TSC's frequency the host's, only when its kernel states it
exactly, the operator's, or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec
from vmimage import boot, guestclock
from vmimage.kernel import Kernel

KERNEL = Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel")
EXACT = "fpu tsc msr constant_tsc rep_good nopl nonstop_tsc cpuid tsc_known_freq pni"


def cpuinfo(flags: str = EXACT, mhz: str = "2596.120", cpus: int = 2) -> str:
    block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
             f"cpu MHz\t\t: {mhz}\ncache size\t: 512 KB\nflags\t\t: {flags}\n\n")
    return "".join(block.format(n=n) for n in range(cpus))


def test_the_host_kernels_exact_tsc_frequency_is_read_in_khz() -> None:
    assert guestclock.khz_from_cpuinfo(cpuinfo()) == 2_596_120
    assert guestclock.khz_from_cpuinfo(cpuinfo(mhz="3000")) == 3_000_000
    assert guestclock.khz_from_cpuinfo(cpuinfo(mhz="2400.5")) == 2_400_500


@pytest.mark.parametrize("flags", [
    "fpu tsc constant_tsc nonstop_tsc",                       # measured at boot, not known
    "fpu tsc constant_tsc tsc_known_freq",                    # stops in deep C-states
    "fpu tsc nonstop_tsc tsc_known_freq",                     # varies with the clock
    EXACT + " aperfmperf",                                    # cpu MHz is the current clock
    "",
])
def test_no_frequency_unless_cpu_mhz_is_the_tsc_known_exactly(flags: str) -> None:
    assert guestclock.khz_from_cpuinfo(cpuinfo(flags=flags)) is None


@pytest.mark.parametrize("mhz", ["", "fast", "2596.12x", "-1.0", "0.5", "99999.000"])
def test_an_unreadable_or_implausible_frequency_is_none(mhz: str) -> None:
    assert guestclock.khz_from_cpuinfo(cpuinfo(mhz=mhz)) is None


def test_only_the_first_processor_is_read() -> None:
    text = cpuinfo(cpus=1) + cpuinfo(flags="fpu", mhz="1.0", cpus=1)
    assert guestclock.khz_from_cpuinfo(text) == 2_596_120
    assert guestclock.khz_from_cpuinfo("") is None


def test_the_setting_chooses_the_source(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo())
    assert guestclock.guest_tsc_khz("auto", info) == 2_596_120
    assert guestclock.guest_tsc_khz("off", info) is None
    assert guestclock.guest_tsc_khz("2000000", info) == 2_000_000
    assert guestclock.guest_tsc_khz("auto", tmp_path / "absent") is None


@pytest.mark.parametrize("value, parsed", [
    ("", "auto"), ("AUTO", "auto"), (" off ", "off"), ("2596120", "2596120"),
    ("0002596120", "2596120")])
def test_the_variable_accepts_auto_off_or_khz(value: str, parsed: str) -> None:
    assert config_from_env({"HYPERVM_GUEST_TSC_KHZ": value}).guest_tsc_khz == parsed
    assert config_from_env({}).guest_tsc_khz == "auto"


@pytest.mark.parametrize("value", ["2596.12", "2596", "99999999", "on", "-5"])
def test_a_bad_variable_names_itself_and_the_fix(value: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        config_from_env({"HYPERVM_GUEST_TSC_KHZ": value})
    text = str(e.value)
    assert "HYPERVM_GUEST_TSC_KHZ" in text and "kHz" in text


def test_the_clock_arguments_come_before_the_kernels_own() -> None:
    args = guestclock.tcg_args(2_596_120)
    assert args == ("tsc_early_khz=2596120", "hypervm.apic_khz=1000000")
    assert guestclock.tcg_args(None) == ("hypervm.apic_khz=1000000",)
    words = boot.kernel_cmdline(KERNEL, clock_args=args).split()
    assert words[-2:] == list(args)
    assert boot.kernel_cmdline(KERNEL, quiet=False, clock_args=args).split() == [
        w for w in words if w != "quiet"]
    assert not [w for w in boot.kernel_cmdline(KERNEL).split() if "khz" in w]


def _resolve(monkeypatch: pytest.MonkeyPatch, accel: str, setting: str) -> str:
    monkeypatch.setattr(boot.store, "package_versions", lambda *a: None)
    monkeypatch.setattr(boot, "find_kernel", lambda cfg: KERNEL)
    monkeypatch.setattr(boot, "ensure_initrd", lambda cfg, kernel: Path("/i"))
    monkeypatch.setattr(boot, "find_qemu", lambda cfg: None)
    monkeypatch.setattr(boot.guestclock, "guest_tsc_khz",
                        lambda s, cpuinfo=None: None if s == "off" else 2_596_120)
    cfg = config_from_env({"HYPERVM_GUEST_TSC_KHZ": setting})
    return boot.resolve_boot(cfg, accel=accel).cmdline


def test_only_tcg_guests_are_told_their_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under KVM the guest's kvm-clock gives the TSC's frequency and its APIC has a
    TSC-deadline mode; a TCG guest's TSC is the host's and its APIC counts QEMU's ns."""
    tcg = _resolve(monkeypatch, "tcg", "auto").split()
    assert {"tsc_early_khz=2596120", "hypervm.apic_khz=1000000"} <= set(tcg)
    assert "khz" not in _resolve(monkeypatch, "kvm", "auto")
    off = _resolve(monkeypatch, "tcg", "off")
    assert "tsc_early_khz" not in off and "hypervm.apic_khz=1000000" in off.split()
