"""vmimage.kernel.elfunpad: PT_LOADs split around page runs of padding."""

from __future__ import annotations

from vmimage.kernel.elfunpad import EHDR, PAGE, PHDR, PT_LOAD, unpad

BASE = 0x1000000


def _elf(segment: bytes, flags: int = 5, memsz_extra: int = 0) -> bytes:
    head = bytearray(2 * PAGE)
    EHDR.pack_into(head, 0, b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, BASE, 64, 0, 0,
                   EHDR.size, PHDR.size, 1, 0, 0, 0)
    PHDR.pack_into(head, 64, PT_LOAD, flags, 2 * PAGE, BASE, BASE, len(segment),
                   len(segment) + memsz_extra, PAGE)
    return bytes(head) + segment


def _loads(image: bytes) -> list[tuple[int, int, int, int]]:
    eh = EHDR.unpack_from(image, 0)
    phs = [PHDR.unpack_from(image, eh[5] + i * eh[9]) for i in range(eh[10])]
    return [(p[2], p[3], p[5], p[6]) for p in phs if p[0] == PT_LOAD]


def test_zero_and_int3_runs_are_not_loaded_and_bss_stays() -> None:
    code = b"\x90" * PAGE
    seg = code + b"\xcc" * (16 * PAGE) + code + bytes(20 * PAGE) + code
    image, saved = unpad(_elf(seg, memsz_extra=3 * PAGE))
    assert saved == 36 * PAGE
    assert _loads(image) == [(2 * PAGE, BASE, PAGE, PAGE),
                             (19 * PAGE, BASE + 17 * PAGE, PAGE, PAGE),
                             (40 * PAGE, BASE + 38 * PAGE, PAGE, 4 * PAGE)]
    assert image[2 * PAGE:] == seg  # the data itself is untouched


def test_short_runs_int3_in_data_and_non_elf_are_left_alone() -> None:
    code = b"\x90" * PAGE
    seg = code + bytes(4 * PAGE) + code
    assert unpad(_elf(seg))[1] == 0
    assert unpad(_elf(code + b"\xcc" * (16 * PAGE) + code, flags=6))[1] == 0  # RW: no int3 skip
    assert unpad(b"\x7fELF") == (b"\x7fELF", 0)
