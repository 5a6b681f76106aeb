"""``hypervm demo``: a real workload in a real HyperVM, from an image, output on the terminal."""

from __future__ import annotations

import argparse
import platform
import sys

from executor.cli.run import run_command
from hypervm.config import config_from_env
from vmimage.images.layout import layout_from_rootfs
from vmimage.rootfs import make_busybox_rootfs

DEMO_SCRIPT = r"""
echo "== Hello from inside a HyperVM =="
echo "guest kernel:   $(uname -r)"
echo "hostname:       $(hostname)"
echo "pid of this sh: $$ (own PID namespace)"
echo "cpus:           $(grep -c ^processor /proc/cpuinfo)"
echo "memory:         $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
echo "root fs:        $(awk '$2 == "/" {print $3}' /proc/mounts) of the image's read-only layers"
echo "network:        $(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
echo "a little work:  $(seq 1 100000 | awk '{s += $1} END {print "sum(1..100000) = " s}')"
echo "this line goes to stderr" >&2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="boot a HyperVM from an image and run a workload")
    p.set_defaults(func=demo_command)


def demo_image() -> str:
    """A busybox image as an OCI layout under the state dir, made once (no registry needed)."""
    demo_dir = config_from_env().state_dir / "demo"
    layout, tag = demo_dir / "oci", "busybox"
    if not (layout / "index.json").exists():
        rootfs = demo_dir / "busybox-rootfs"
        if not (rootfs / "bin" / "busybox").exists():
            make_busybox_rootfs(rootfs)
        layout_from_rootfs(rootfs, layout, tag, entrypoint=("/bin/sh", "-c"),
                           cmd=("echo hello",), env=("PATH=/bin:/sbin:/usr/bin:/usr/sbin",))
    return f"oci:{layout}:{tag}"


def demo_command(_: argparse.Namespace) -> int:
    image = demo_image()
    print(f"host kernel:    {platform.release()}  (the guest runs its own kernel)")
    print(f"$ hypervm run {image} -- '<script>'")
    sys.stdout.flush()
    from executor.cli.main import build_parser  # a cycle: main registers this command

    args = build_parser().parse_args(["run", "--name", "demo", "-q", image, "--", DEMO_SCRIPT])
    return run_command(args)
