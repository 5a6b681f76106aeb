"""``hypervm demo``: a real workload in a real HyperVM, output on the terminal."""

from __future__ import annotations

import argparse
import platform
import sys

from executor.cli_run import rootfs_image, run_pod
from executor.config import config_from_env
from executor.podspec import Container, PodSpec, Process, Resources, Rootfs

DEMO_SCRIPT = r"""
echo "== Hello from inside a HyperVM =="
echo "guest kernel:   $(uname -r)"
echo "hostname:       $(hostname)"
echo "pid of this sh: $$ (own PID namespace)"
echo "cpus:           $(grep -c ^processor /proc/cpuinfo)"
echo "memory:         $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
echo "root fs:        $(awk '$2 == "/" {print $3}' /proc/mounts)"
echo "a little work:  $(seq 1 100000 | awk '{s += $1} END {print "sum(1..100000) = " s}')"
echo "this line goes to stderr" >&2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="boot a HyperVM and run a small workload in it")
    p.set_defaults(func=demo_command)


def demo_command(_: argparse.Namespace) -> int:
    from vmimage.rootfs import make_busybox_rootfs

    cfg = config_from_env()
    rootfs = cfg.state_dir / "demo" / "busybox-rootfs"
    if not (rootfs / "bin" / "busybox").exists():
        make_busybox_rootfs(rootfs)
    print(f"host kernel:    {platform.release()}  (the guest runs its own kernel)")
    sys.stdout.flush()
    with rootfs_image(cfg, rootfs) as image:
        pod = PodSpec(
            name="demo",
            containers=(Container(name="demo", rootfs=Rootfs(layers=(image,)),
                                  process=Process(args=("/bin/sh", "-c", DEMO_SCRIPT))),),
            resources=Resources(cpus=1, memory_mib=256),
        )
        return run_pod(cfg, pod)
