"""Where boot time goes: one raw boot without ``quiet`` (its own sample, not in the figures:
printing to the UART slows it), split by the host clock (createXML, then READY) and by the
guest kernel's printk timestamps (kernel start → ``Run /init``, and the largest gaps between
consecutive kernel lines, named by the line that ends each gap)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bench.rawboot import RawBoot

_LINE_RE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
RUN_INIT = "Run /init"


def kernel_lines(console: str) -> list[tuple[float, str]]:
    out = []
    for line in console.splitlines():
        match = _LINE_RE.match(line.strip())
        if match:
            out.append((float(match.group(1)), match.group(2)))
    return out


def largest_gaps(lines: Sequence[tuple[float, str]], top: int = 6) -> list[dict[str, Any]]:
    gaps: list[dict[str, Any]] = [
        {"seconds": round(b[0] - a[0], 3), "after": a[1][:80], "before": b[1][:80]}
        for a, b in zip(lines, lines[1:], strict=False)
    ]
    return sorted(gaps, key=lambda g: -float(g["seconds"]))[:top]


def boot_profile(boot: RawBoot) -> dict[str, Any]:
    lines = kernel_lines(boot.console)
    run_init = next((t for t, text in lines if text.startswith(RUN_INIT)), None)
    profile: dict[str, Any] = {
        "verbose_boot_total_s": round(boot.total_s, 3),
        "libvirt_qemu_start_s": round(boot.qemu_s, 3),
        "guest_to_ready_s": round(boot.guest_s, 3),
        "kernel_to_run_init_s": run_init,
        "largest_kernel_gaps": largest_gaps(lines),
    }
    if run_init is not None:
        # what the guest clock does not see: firmware, decompression, early setup, and init
        # from its exec to READY on the host socket
        profile["firmware_early_and_init_to_ready_s"] = round(boot.guest_s - run_init, 3)
    return profile


def hypervm_boot(env: Any, layers: Sequence[Any]) -> dict[str, Any]:
    """The same profile for a HyperVM as the executor boots it (layer disk, NIC), with
    ``quiet`` dropped from the kernel command line for this one boot."""
    import time

    import executor.vm
    from bench import density
    from executor.libvirt.hypervisor import Hypervisor

    spec = density.pod(layers, "profile")
    with Hypervisor(env.cfg.libvirt_uri) as hv, \
            executor.vm.HyperVM(env.cfg, spec, hypervisor=hv, boot_files=env.verbose()) as vm:
        vm.boot()
        time.sleep(0.3)  # let virtlogd write the last lines
        console = vm.console_log.read_text(errors="replace")
        boot_s = vm.boot_seconds or 0.0
    lines = kernel_lines(console)
    run_init = next((t for t, text in lines if text.startswith(RUN_INIT)), None)
    return {"verbose_boot_total_s": round(boot_s, 3), "kernel_to_run_init_s": run_init,
            "largest_kernel_gaps": largest_gaps(lines)}


if __name__ == "__main__":
    # ``python -m bench.profile``: the host and guest profiles of a launch (bench/profilerun.py)
    import sys

    from bench.profilerun import main

    sys.exit(main())
