"""The guest kernel command line every HyperVM boots with (vmimage.boot)."""

from __future__ import annotations

from pathlib import Path

from vmimage.boot import PAGE_REPORTING_ORDER, kernel_cmdline
from vmimage.kernel import Kernel

KERNEL = Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel")


def test_guest_reports_free_blocks_of_32_kib() -> None:
    """init sets the guest's page_reporting_order from hypervm.page_reporting_order= (its own
    default is 5, 128 KiB): 3 gave an idle VM ~0.5 MiB less resident guest RAM."""
    for quiet in (True, False):
        words = kernel_cmdline(KERNEL, quiet=quiet).split()
        assert [w for w in words if w.startswith("hypervm.page_reporting_order=")] == [
            f"hypervm.page_reporting_order={PAGE_REPORTING_ORDER}"]
    assert PAGE_REPORTING_ORDER == 3


def test_quiet_is_the_only_difference_of_a_verbose_boot() -> None:
    quiet = kernel_cmdline(KERNEL).split()
    assert "quiet" in quiet
    assert kernel_cmdline(KERNEL, quiet=False).split() == [w for w in quiet if w != "quiet"]
