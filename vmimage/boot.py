"""What a HyperVM boots: the one resolver of boot artefacts (kernel, initrd, QEMU, firmware,
accelerator, kernel command line) that cold boots, the warm pool and the bench all use.

It never builds (``make artifacts`` does): it finds what is on this machine, falling back as
each artefact's own finder does (an older HyperKernel, Debian's QEMU) with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.frozen import frozen_dataclass
from vmimage import guestclock
from vmimage.accel import DEFAULT_BIOS, detect_accel
from vmimage.initrd import ensure_initrd
from vmimage.kernel import Kernel, dpkg_cache, find_kernel, hyperkernel, store
from vmimage.qemu import Qemu, find_qemu, hyperqemu

#: what finding the kernel and HyperQEMU asks dpkg (vmimage.kernel.hyperkernel, .qemu.hyperqemu)
PACKAGE_FIELDS = ((hyperkernel.SOURCE_PACKAGE, "Version"),
                  (hyperqemu.BINARY_PACKAGE, "source:Version"))

#: the guest kernel's command line; quiet keeps TCG boots fast (the console is a slow UART);
#: pci=noacpi: ACPI IRQ routing costs ~0.19 s per virtio device under TCG (bench: HyperVM boot
#: 2.12 -> 1.41 s); ACPI itself stays, the guest powers off through it
#: the smallest free block (2^order pages) the guest's free page reporting (virtio-balloon)
#: gives back to the host; init sets it (init/src/boot.c, whose own default is 5, 128 KiB).
#: 3 (32 KiB): an idle 128 MiB VM's guest RAM 14.4 -> 13.9 MiB resident (bench.idlemem, 3 VMs,
#: back to back: private 24.1-24.3 -> 23.7 MiB); 0 saved ~0.1 MiB more for a report per page;
#: boot, START and a pipe workload unchanged within the noise
PAGE_REPORTING_ORDER = 3
BASE_CMDLINE = ("console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check "
                f"noreplace-smp pci=noacpi hypervm.page_reporting_order={PAGE_REPORTING_ORDER}")


@frozen_dataclass
class BootFiles:
    """Everything a domain needs to boot a HyperVM on this host."""

    kernel: Kernel
    initrd: Path
    qemu: Qemu
    #: "kvm" or "tcg"
    accel: str
    cmdline: str
    #: firmware loaded as a ROM; None lets QEMU use SeaBIOS (slower)
    bios: Path | None = DEFAULT_BIOS

    @property
    def emulator(self) -> Path | None:
        """The domain's <emulator>: None leaves libvirt's default (Debian's QEMU)."""
        return self.qemu.emulator

    def flushes_after_boot(self, cfg: HostConfig) -> bool:
        """Whether a VM gives its boot's translations back once READY (HyperQEMU, TCG)."""
        return self.qemu.flushes_after_boot(cfg, self.accel)

    def discards_zero_pages(self, cfg: HostConfig) -> bool:
        """Whether a cold VM gives back its guest RAM's pages of zeros with its settled flush."""
        return self.qemu.discards_zero_pages(cfg, self.accel)


def kernel_cmdline(kernel: Kernel, *, quiet: bool = True, clock_args: Sequence[str] = ()) -> str:
    """The guest kernel's command line; ``clock_args``: what a TCG guest is told of its clocks
    (vmimage.guestclock)."""
    base = BASE_CMDLINE if quiet else BASE_CMDLINE.replace(" quiet", "")
    return " ".join(filter(None, [base, *clock_args, kernel.cmdline_extra]))


def resolve_boot(cfg: HostConfig, *, accel: str | None = None, quiet: bool = True) -> BootFiles:
    """The boot artefacts of this host; ``accel`` forces an accelerator (else detected, with
    the verdict cached per host boot). Raises HostError when there is no guest kernel."""
    # one dpkg-query for the kernel's and QEMU's keys, none while dpkg's database is unchanged
    store.package_versions(PACKAGE_FIELDS, cfg.run_dir / dpkg_cache.CACHE_NAME)
    kernel = find_kernel(cfg)
    accel = accel or detect_accel(cfg)
    # a TCG guest told its TSC's and APIC timer's clocks does not calibrate them at boot
    clocks = (guestclock.tcg_args(guestclock.guest_tsc_khz(cfg.guest_tsc_khz))
              if accel == "tcg" else ())
    return BootFiles(kernel=kernel, initrd=ensure_initrd(cfg, kernel), qemu=find_qemu(cfg),
                     accel=accel, cmdline=kernel_cmdline(kernel, quiet=quiet, clock_args=clocks))
