"""``python -m bench.share_io``: what the sandbox share costs inside a real VM, and what a guest
can make of it on the host.

One VM (busybox layer, the sandbox shared over 9p as the executor shares it) runs: dd 200 MB
write + read in the share, then 2000 small files created, stat'ed, unlinked; then it plants a
symlink, a setuid file, a FIFO and a device node. The host reports the timings (guest
/proc/uptime, 10 ms resolution) and what the planted things are on the host.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

FILES = 2000
MB = 200
GUEST_SCRIPT = f"""
set -e
cd /mnt/mesos/sandbox
t() {{ read u _ < /proc/uptime; echo $u; }}
a=$(t); dd if=/dev/zero of=big bs=1M count={MB} 2>/dev/null; sync; b=$(t)
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
b=$(t); dd if=big of=/dev/null bs=1M 2>/dev/null; c=$(t); rm big
mkdir m; i=0; while [ $i -lt {FILES} ]; do : > m/f$i; i=$((i+1)); done; d=$(t)
i=0; while [ $i -lt {FILES} ]; do [ -e m/f$i ]; i=$((i+1)); done; e=$(t)
i=0; while [ $i -lt {FILES} ]; do rm m/f$i; i=$((i+1)); done; f=$(t); rmdir m
i=0; g=$(t); while [ $i -lt {FILES} ]; do [ -e m$i ] || :; i=$((i+1)); done; h=$(t)
echo "TIMES $a $b $c $d $e $f $g $h"
set +e
ln -s /etc/passwd planted-link
echo x > planted-suid; chmod 4755 planted-suid
mkfifo planted-fifo
mknod planted-dev c 1 3
ls -l planted-*
exit 0
"""


def timings(line: str) -> dict[str, float]:
    """Seconds per phase from the guest's TIMES line; the shell's own loop cost (the last
    phase: a stat of a missing name, which never leaves the guest's dcache... nor the share)
    is reported separately, not subtracted."""
    a, b, c, d, e, f, g, h = (float(x) for x in line.split()[1:])
    return {"write_s": round(b - a, 2), "read_s": round(c - b, 2),
            "write_mb_s": round(MB / max(b - a, 0.01), 1),
            "read_mb_s": round(MB / max(c - b, 0.01), 1),
            "create_2000_s": round(d - c, 2), "stat_2000_s": round(e - d, 2),
            "unlink_2000_s": round(f - e, 2), "shell_loop_2000_s": round(h - g, 2)}


def host_view(sandbox: Path) -> dict[str, str]:
    """What each planted name is on the host: symlink, setuid, fifo, device, or a plain file."""
    out = {}
    for name in ("planted-link", "planted-suid", "planted-fifo", "planted-dev"):
        try:
            st = os.lstat(sandbox / name)
        except FileNotFoundError:
            out[name] = "absent"
            continue
        mode = st.st_mode
        kind = ("symlink" if stat.S_ISLNK(mode) else "fifo" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "dir" if stat.S_ISDIR(mode) else "file")
        if mode & (stat.S_ISUID | stat.S_ISGID):
            kind += "+setid"
        out[name] = f"{kind} {stat.filemode(mode)} uid {st.st_uid}"
    return out


def run(workdir: Path) -> dict[str, Any]:
    from executor.vm import HyperVM
    from hypervm.config import config_from_env
    from hypervm.podspec import Container, Mount, PodSpec, Process, Resources, Rootfs
    from tests.conftest import run_to_exit
    from vmimage.rootfs import build_layer_image, make_busybox_rootfs

    cfg = config_from_env()
    make_busybox_rootfs(workdir / "rootfs")
    cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    layer = cfg.rootfs_dir / f"share-io-{os.getpid()}.erofs"
    build_layer_image(workdir / "rootfs", layer)
    sandbox = workdir / "sandbox"
    sandbox.mkdir()
    os.chmod(workdir, 0o755)
    container = Container("io", Rootfs(layers=(layer,)), Process(args=("sh", "-c", GUEST_SCRIPT)),
                          mounts=(Mount(type="9p", destination="/mnt/mesos/sandbox",
                                        source=sandbox, owned=True),))
    pod = PodSpec(name=f"share-io-{os.getpid()}", containers=(container,),
                  resources=Resources(cpus=1, memory_mib=256))
    try:
        with HyperVM(cfg, pod) as vm:
            vm.boot(timeout=120)
            code, output = run_to_exit(vm, container, timeout=600)
    finally:
        layer.unlink(missing_ok=True)
    line = next((x for x in output.splitlines() if x.startswith("TIMES ")), None)
    if code != 0 or line is None:
        raise RuntimeError(f"the guest script failed ({code}):\n{output}")
    return {"timings": timings(line), "host_view": host_view(sandbox), "guest_ls": [
        x for x in output.splitlines() if x.startswith(("l", "-", "p", "c"))]}


def main(argv: list[str] | None = None) -> int:
    """``[--accessmode squash|mapped] [--runs N]``: the mode to measure (default: the one VMs
    use), each phase's median over N runs."""
    import argparse
    import statistics

    from executor.libvirt import domain_xml as libvirt_xml

    parser = argparse.ArgumentParser(prog="python -m bench.share_io")
    parser.add_argument("--accessmode", default=libvirt_xml.SHARE_ACCESSMODE)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    libvirt_xml.SHARE_ACCESSMODE = args.accessmode  # the bench's lever, not a setting
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="share-io-") as tmp:
            results.append(run(Path(tmp)))
    runs = [r["timings"] for r in results]
    doc = dict(results[-1], accessmode=args.accessmode, runs=runs)
    doc["timings"] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
