"""What a TCG guest is told about its clocks on its command line, so that its kernel does not
measure them at boot: the TSC's frequency (``tsc_early_khz=``) and the local APIC timer's
(``hypervm.apic_khz=``, the HyperKernel's apic-khz patch).

The APIC timer: QEMU's (TCG's userspace APIC, as KVM's) counts its virtual clock's
nanoseconds, a 1 GHz input clock, and has no TSC-deadline mode under TCG, so a guest kernel
that is not told calibrates it against the PIT or PM timer for 100 ms (``HZ/10`` ticks,
busy-waiting) at every boot. Told, it does not (DEVELOPERS.md, "The guest's timer
calibrations").

The TSC: under TCG a guest's TSC is the host's (QEMU's ``rdtsc`` returns the host's counter),
so the host knows its frequency. A guest kernel that is not told measures it at boot: a "fast"
calibration against the PIT, which under TCG needs every port read in a ~10 ms loop to take
about as long as the last, and which fails whenever QEMU's main loop or another host process
delays the vCPU thread in that window; the kernel then falls back to its slow calibration (PIT,
HPET and PM timer windows), ~55 ms more. On this project's 2-core hosts that happened to about
half of the cold ``hypervm run``'s boots (the host's CLI, libvirtd and QEMU's own threads are
busy right after createXML) and to almost none of the raw boots with nothing else running
(DEVELOPERS.md, "The guest's timer calibrations"). With ``tsc_early_khz`` the kernel takes the
given frequency for the TSC, and for the CPU when its fast calibration fails: no slow
calibration, whatever the host is doing. The kernel still refines the TSC frequency 1 s after
boot (a guest living that long), against the HPET or PM timer, within 1 %.

Where the value comes from (``HYPERVM_GUEST_TSC_KHZ``):

- ``auto`` (default): the host kernel's own frequency, read from ``/proc/cpuinfo``'s ``cpu MHz``
  only when that line *is* the TSC's: the CPU has a constant, non-stop TSC whose frequency the
  kernel knows exactly (``constant_tsc``, ``nonstop_tsc``, ``tsc_known_freq``: given by the
  CPU or the hypervisor, not measured), and no ``aperfmperf`` (with it, and with a cpufreq
  driver, the line is a measured current frequency). Otherwise nothing is passed and guests
  calibrate as before.
- ``off``: never pass it.
- a number of kHz: the operator's value (e.g. the host's ``tsc: Detected … MHz TSC`` line).

Only TCG guests get it: under KVM the guest's kvm-clock gives its own frequency.
"""

from __future__ import annotations

from pathlib import Path

from hypervm.config import MAX_TSC_KHZ, MIN_TSC_KHZ

CPUINFO = Path("/proc/cpuinfo")
#: the input clock of QEMU's local APIC timer (hw/intc/apic.c: QEMU_CLOCK_VIRTUAL ns)
QEMU_APIC_KHZ = 1_000_000
#: the flags that make ``cpu MHz`` the kernel's exact TSC frequency
REQUIRED_FLAGS = frozenset({"constant_tsc", "nonstop_tsc", "tsc_known_freq"})
#: with it, ``cpu MHz`` is measured from the APERF/MPERF counters: the current clock
MEASURED_FLAG = "aperfmperf"


def khz_from_cpuinfo(text: str) -> int | None:
    """The TSC frequency in kHz that the first CPU of ``text`` (``/proc/cpuinfo``) states
    exactly, else None (see the module's docstring)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    if not REQUIRED_FLAGS <= flags or MEASURED_FLAG in flags:
        return None
    whole, dot, part = fields.get("cpu MHz", "").partition(".")
    if not whole.isdigit() or (part and not part.isdigit()):
        return None
    khz = int(whole) * 1000 + int((part + "000")[:3])
    return khz if MIN_TSC_KHZ <= khz <= MAX_TSC_KHZ else None


def guest_tsc_khz(setting: str, cpuinfo: Path = CPUINFO) -> int | None:
    """The frequency to pass for ``setting`` (HostConfig.guest_tsc_khz: ``auto``, ``off`` or
    a number of kHz, checked by hypervm.config), or None."""
    if setting == "off":
        return None
    if setting != "auto":
        return int(setting)
    try:
        return khz_from_cpuinfo(cpuinfo.read_text())
    except (OSError, UnicodeDecodeError):
        return None


def tcg_args(tsc_khz: int | None) -> tuple[str, ...]:
    """The kernel arguments of a TCG guest's clocks: the APIC timer's, and the TSC's when
    ``tsc_khz`` is known (a kernel without the apic-khz patch ignores the dotted one)."""
    tsc = (f"tsc_early_khz={tsc_khz}",) if tsc_khz is not None else ()
    return (*tsc, f"hypervm.apic_khz={QEMU_APIC_KHZ}")
