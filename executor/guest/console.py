"""The guest's serial console log as the host reads it (the tail logged when a boot fails).

The log lies in the VM's run dir, which QEMU (the VM's uid, a guest that escaped into it) can
reach: the host trusts nothing there to be what its name says. Root reads it only as a regular
file, never through a link (``O_NOFOLLOW``), never waiting on a FIFO (``O_NONBLOCK``), and only
its last :data:`TAIL_BYTES`; the text is clipped like everything else a guest says.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from executor.guest.protocol import clip_text

#: the most of a console log read: its end is what tells why a boot failed
TAIL_BYTES = 32 * 1024
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def tail(path: Path, lines: int = 20, line_chars: int = 300) -> str:
    """The last ``lines`` lines of the console log ``path`` (each clipped to ``line_chars``),
    or "" when it is missing or not a regular file."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        start = max(0, st.st_size - TAIL_BYTES)
        data = os.pread(fd, TAIL_BYTES, start)
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0:
        text = text[1:]  # the first line read is cut
    return "\n".join(clip_text(line, line_chars) for line in text[-lines:])
