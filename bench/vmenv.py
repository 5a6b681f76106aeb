"""What every VM measurement shares: host config, kernel, initrd, accelerator, one libvirt
connection, and names that start with ``hypervm-bench-`` so cleanup finds every VM we made."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypervm.config import HostConfig, config_from_env
from vmimage.boot import BootFiles, resolve_boot

log = logging.getLogger(__name__)

#: every domain the benchmark creates starts with it
DOMAIN_PREFIX = "hypervm-bench-"
GUEST_MIB = 128


def bench_name(kind: str) -> str:
    """A pod name for a benchmark VM: ``bench-<kind>-<8 hex>``."""
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


@dataclass
class VMEnv:
    cfg: HostConfig
    boot: BootFiles

    @property
    def kernel(self) -> Any:
        return self.boot.kernel

    @property
    def initrd(self) -> Path:
        return self.boot.initrd

    @property
    def accel(self) -> str:
        return self.boot.accel

    def current(self) -> VMEnv:
        """This environment with the boot files a HyperVM booted now would use (another
        engineer may build a new HyperKernel while the benchmark runs)."""
        boot = resolve_boot(self.cfg, accel=self.accel)
        if boot.kernel == self.kernel:
            return self
        log.warning("the kernel changed during the run: %s -> %s", self.kernel.key,
                    boot.kernel.key)
        return VMEnv(cfg=self.cfg, boot=boot)

    def verbose(self, cmdline_extra: str = "") -> BootFiles:
        """These boot files with the kernel's console messages on (no ``quiet``), plus
        ``cmdline_extra``: for the profile of one boot."""
        verbose = self.boot.cmdline.replace(" quiet", "", 1)
        return replace(self.boot, cmdline=verbose + cmdline_extra)

    def with_cmdline(self, cmdline_extra: str) -> BootFiles:
        return replace(self.boot, cmdline=self.boot.cmdline + cmdline_extra)

    def with_pool(self, use: bool, socket: Path | None = None) -> VMEnv:
        """This environment taking VMs from the warm pool at ``socket`` (or never)."""
        cfg = replace(self.cfg, use_pool=use,
                      pool_socket_override=socket or self.cfg.pool_socket_override)
        return VMEnv(cfg=cfg, boot=self.boot)

    @classmethod
    def load(cls) -> VMEnv:
        cfg = config_from_env()
        return cls(cfg=cfg, boot=resolve_boot(cfg))


def leftover_domains() -> list[str]:
    """Our benchmark domains libvirt still knows (running or defined)."""
    if shutil.which("virsh") is None:
        return []
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=False).stdout
    return [n.strip() for n in out.splitlines() if n.strip().startswith(DOMAIN_PREFIX)]


def wait_no_new_domains(before: set[str], timeout: float = 15.0) -> list[str]:
    """Benchmark domains not in ``before`` still there after ``timeout`` s (libvirt may report a
    destroyed domain "in shutdown" for a moment on a loaded host)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        new = sorted(set(leftover_domains()) - before)
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.5)


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (VmRSS), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rollup_mib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pss_mib(pid: int) -> float | None:
    """Proportional set size of ``pid`` in MiB: shared pages (the QEMU binary, libraries, the
    kernel file's page cache) divided among the processes mapping them."""
    return _rollup_mib(pid, "Pss")


def private_dirty_mib(pid: int) -> float | None:
    """Memory only this QEMU uses, in MiB (guest RAM, translation cache, heap, relocated data):
    what each more VM costs the host at least."""
    return _rollup_mib(pid, "Private_Dirty")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_by_mapping(pid: int, top: int = 4) -> list[dict[str, Any]]:
    """The ``top`` mappings of ``pid`` by resident size (MiB), with their virtual size: for a
    QEMU process the guest RAM (its size is the guest's), the TCG translation buffer, heap."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    maps: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            current = {"name": fields[5] if len(fields) > 5 else "[anon]"}
            maps.append(current)
        elif current is not None and fields[:1] == ["Size:"]:
            current["size_mib"] = round(int(fields[1]) / 1024, 1)
        elif current is not None and fields[:1] == ["Rss:"]:
            current["rss_mib"] = round(int(fields[1]) / 1024, 1)
    maps.sort(key=lambda m: -m.get("rss_mib", 0))
    return maps[:top]



def _mapping_label(fields: list[str]) -> str:
    """A readable name for one /proc/PID/smaps mapping of a QEMU process."""
    name = fields[5] if len(fields) > 5 else ""
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if name.startswith("/memfd:"):
        return "guest RAM (memfd)"
    if not name and "x" in fields[1] and end - start >= 256 * 1024 * 1024:
        return "TCG translation buffer"
    if not name:
        return f"[anon {(end - start) / 1048576:.1f} MiB]"
    return name


def private_by_mapping(pid: int, top: int = 8) -> list[dict[str, Any]]:
    """Private_Clean + Private_Dirty of ``pid`` by mapping (MiB, largest first; mappings of one
    file or kind summed): where a QEMU's private memory is (guest RAM, translation buffer,
    heap and thread arenas, the binary's relocated data). Guest RAM in anonymous memory is
    the mapping marked mergeable (HYPERVM_KSM=on)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    return private_by_mapping_of(text, top)


def private_by_mapping_of(text: str, top: int = 8) -> list[dict[str, Any]]:
    """:func:`private_by_mapping` of the text of a /proc/PID/smaps."""
    maps: list[list[Any]] = []  # [label, private KiB]
    for line in text.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            maps.append([_mapping_label(fields), 0])
        elif maps and fields[:1] in (["Private_Clean:"], ["Private_Dirty:"]):
            maps[-1][1] += int(fields[1])
        elif maps and fields[:1] == ["VmFlags:"] and "mg" in fields:
            maps[-1][0] = "guest RAM (anonymous, mergeable)"
    private: dict[str, int] = {}
    for label, kib in maps:
        private[label] = private.get(label, 0) + kib
    rows = sorted(private.items(), key=lambda kv: -kv[1])
    return [{"name": name, "private_mib": round(kib / 1024, 2)} for name, kib in rows[:top]
            if kib]


def guest_ram_pages(pid: int) -> dict[str, Any]:
    """Where a QEMU's guest RAM (its memfd mapping) is resident, from /proc/PID/pagemap: KiB
    resident and KiB of them that hold only zeros, in all and by guest-physical MiB (root
    only: pagemap and mem of another process). What free page reporting leaves and what
    HyperQEMU's ``discard-zero-pages`` would give back."""
    page = os.sysconf("SC_PAGE_SIZE")
    ram = None
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if "/memfd:" in line and (ram is None or hi - lo > ram[1] - ram[0]):
            ram = (lo, hi)
    if ram is None:
        return {"resident_kib": 0, "zero_kib": 0, "by_mib": {}}
    count = (ram[1] - ram[0]) // page
    by_mib: dict[int, list[int]] = {}
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "rb") as mem:
        pagemap.seek(ram[0] // page * 8)
        entries = pagemap.read(count * 8)
        for i in range(count):
            if not entries[i * 8 + 7] & 0x80:  # bit 63: present
                continue
            mem.seek(ram[0] + i * page)
            row = by_mib.setdefault(i * page >> 20, [0, 0])
            row[0] += page // 1024
            row[1] += page // 1024 if not any(mem.read(page)) else 0
    return {"resident_kib": sum(r[0] for r in by_mib.values()),
            "zero_kib": sum(r[1] for r in by_mib.values()),
            "by_mib": {mib: tuple(r) for mib, r in sorted(by_mib.items())}}
