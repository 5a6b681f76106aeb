"""Rewrite a vmlinux's program headers so QEMU does not load its padding (from rsslab).

The x86-64 link puts 2 MiB alignments around the entry text and before .rodata/.data
(vmlinux.lds.S: ALIGN_ENTRY_TEXT_*, X86_ALIGN_RODATA_*; not configurable on x86-64): in the
HyperKernel about 4.3 MiB of the first PT_LOAD are 0xcc fill or zeros. QEMU's PVH loader (ELF
ROM) copies every byte of every PT_LOAD from its private mapping of the file into guest RAM, so
the padding costs file pages in QEMU's RSS and guest RAM pages.

This splits each PT_LOAD around runs of >= MIN_RUN bytes of whole pages that are all zero (any
segment: guest RAM starts zeroed) or all 0xcc (only in executable segments: the linker's
int3 fill between text parts; never executed, the guest then sees zeros instead).
The sections and file offsets stay as they are; only the program header table grows (it has
~2 MiB of room before the first segment).

Usage: python -m vmimage.kernel.elfunpad IN_VMLINUX OUT_VMLINUX [--no-cc] [--min-run BYTES];
from Python: unpad(data) -> (new bytes, bytes no longer loaded).
"""

from __future__ import annotations

import argparse
import struct
import sys

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PF_X = 1, 1
PAGE = 4096


def split(data: bytes | bytearray, ph: list[int], cc_ok: bool, min_run: int) -> list[list[int]]:
    p_type, flags, off, vaddr, paddr, filesz, memsz, align = ph
    fills = [b"\0" * PAGE] + ([b"\xcc" * PAGE] if cc_ok and flags & PF_X else [])
    skip: list[tuple[int, int]] = []  # [start, end) offsets within the segment, page aligned
    start = None
    first = (-vaddr) % PAGE  # first page boundary inside the segment
    pg = first
    while pg + PAGE <= filesz:
        pad = bytes(data[off + pg:off + pg + PAGE]) in fills
        if pad and start is None:
            start = pg
        if not pad and start is not None:
            if pg - start >= min_run:
                skip.append((start, pg))
            start = None
        pg += PAGE
    if start is not None and pg - start >= min_run:
        skip.append((start, pg))
    if not skip:
        return [ph]
    out, pos = [], 0
    for a, b in skip:
        if a > pos:
            out.append([p_type, flags, off + pos, vaddr + pos, paddr + pos, a - pos, a - pos,
                        PAGE])
        pos = b
    tail_mem = memsz - pos
    if filesz > pos or tail_mem > 0:
        out.append([p_type, flags, off + pos, vaddr + pos, paddr + pos, max(filesz - pos, 0),
                    tail_mem, PAGE])
    return out


def unpad(image: bytes, cc_ok: bool = True, min_run: int = 16 * PAGE) -> tuple[bytes, int]:
    """``image`` with its PT_LOADs split around padding runs, and the bytes no longer loaded."""
    data = bytearray(image)
    if len(data) < EHDR.size or data[:5] != b"\x7fELF\x02":  # not a 64-bit ELF: leave it be
        return bytes(image), 0
    eh = list(EHDR.unpack_from(data, 0))
    phoff, phentsize, phnum = eh[5], eh[9], eh[10]
    phdrs = [list(PHDR.unpack_from(data, phoff + i * phentsize)) for i in range(phnum)]
    new: list[list[int]] = []
    saved = 0
    for ph in phdrs:
        if ph[0] != PT_LOAD:
            new.append(ph)
            continue
        parts = split(data, ph, cc_ok, min_run)
        saved += ph[5] - sum(p[5] for p in parts)
        new += parts
    end = phoff + len(new) * phentsize
    first_data = min(p[2] for p in phdrs if p[0] == PT_LOAD)
    assert end <= first_data, "no room for the program headers"
    assert not any(data[phoff + phnum * phentsize:end]), "program header area is not free"
    for j, ph in enumerate(new):
        PHDR.pack_into(data, phoff + j * phentsize, *ph)
    eh[10] = len(new)
    EHDR.pack_into(data, 0, *eh)
    return bytes(data), saved


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--no-cc", action="store_true", help="only skip zero pages")
    ap.add_argument("--min-run", type=int, default=16 * PAGE)
    args = ap.parse_args()
    with open(args.src, "rb") as f:
        data, saved = unpad(f.read(), not args.no_cc, args.min_run)
    with open(args.dst, "wb") as f:
        f.write(data)
    print(f"{saved / 1048576:.2f} MiB of padding no longer loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
