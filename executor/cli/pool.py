"""``hypervm pool serve|status``: run the warm pool daemon, or ask it how it is doing.

While a pool serves (socket ``$HYPERVM_RUN_DIR/pool.sock``, or ``$HYPERVM_POOL_SOCKET``),
``hypervm run`` and the Mesos executor take a pre-booted VM for every pod of the pool's shape
(``HYPERVM_POOL=off`` makes them boot cold). Run it as a service, e.g. a systemd unit with
``ExecStart=hypervm pool serve --size 4``; SIGTERM destroys its idle VMs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
from typing import Any

from executor.cli.fastrun_serve import RUN_OP, RunService
from executor.pool import claim as warm
from executor.pool.daemon import WarmPool
from executor.pool.learn import DEFAULT_LEARN_IMAGES, LEARN_ENV, learn_images_for
from executor.pool.protocol import MAX_POOL_SIZE, PoolConfig
from executor.snapshot.keeper import StandbyKeeper
from hypervm.config import config_from_env


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pool", help="keep pre-booted HyperVMs ready for fast starts",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the pool daemon in the foreground")
    defaults = PoolConfig()
    serve.add_argument("--size", type=int, default=defaults.size,
                       help="idle VMs to keep ready for any image (default %(default)s; 0 "
                            "keeps only --image VMs)")
    serve.add_argument("--vcpus", type=int, default=defaults.vcpus,
                       help="vCPUs of each pool VM; pods of other shapes boot cold "
                            "(default %(default)s)")
    serve.add_argument("--memory", type=int, default=defaults.memory_mib, metavar="MIB",
                       help="guest memory of each pool VM in MiB (default %(default)s)")
    serve.add_argument("--name", default=defaults.name,
                       help="pool VMs are named hypervm-NAME-… (default %(default)s)")
    serve.add_argument("--image", action="append", default=[], metavar="REF", dest="images",
                       help="also keep VMs with this image's layers attached and mounted: a pod "
                            "of exactly these layers starts faster, and only such a pod gets "
                            "one (repeatable; pulled on first use like a launch pulls)")
    serve.add_argument("--per-image", type=int, default=defaults.per_image, metavar="N",
                       help="idle VMs to keep for each --image (default %(default)s)")
    serve.add_argument("--learn-images", type=int, default=None, metavar="N",
                       help="also keep --per-image VMs for each of the N images run through "
                            "the pool last, per tenant, taken from the image cache (never "
                            f"pulled); 0: none (default ${LEARN_ENV} or {DEFAULT_LEARN_IMAGES})")
    serve.add_argument("--standby", type=int, default=defaults.standby, metavar="N",
                       help="keep a standby clone (the snapshot loaded, reseeded, warmed up) for "
                            "each of the N shapes launches from a snapshot asked for last "
                            "(HYPERVM_SNAPSHOT=on; with it --size may be 0; default "
                            "%(default)s: none)")
    serve.set_defaults(func=serve_command)
    status = sub.add_parser("status", help="print the serving pool's state (JSON by default)")
    status.add_argument("--format", choices=("json", "text"), default="json",
                        help="json (default), or text: one line per item")
    status.set_defaults(func=status_command)


def serve_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    config = PoolConfig(size=args.size, vcpus=args.vcpus, memory_mib=args.memory,
                        name=args.name, images=tuple(args.images),
                        per_image=args.per_image, standby=args.standby,
                        learn_images=learn_images_for(
                            os.environ, args.learn_images,
                            args.size + len(args.images) * args.per_image, args.per_image,
                            MAX_POOL_SIZE)).validate()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    pool = WarmPool(cfg, config)
    pool.add_service(RUN_OP, RunService(pool))  # the fast hypervm run (executor.cli.fastrun)
    keeper = StandbyKeeper(pool)
    with pool, keeper if config.standby else contextlib.nullcontext():
        images = "".join(f" + {config.per_image} for {ref}" for ref in config.images)
        if config.learn_images:
            images += f" + {config.per_image} for each of {config.learn_images} learned images"
        print(f"hypervm pool {config.name!r}: {config.size} VMs{images} of {config.vcpus} vCPU "
              f"/ {config.memory_mib} MiB, standby clones for {config.standby} shapes, serving "
              f"on {cfg.pool_socket}", flush=True)
        stop.wait()
        print(f"hypervm pool {config.name!r}: stopping ({pool.status()['ready']} idle VMs to "
              "destroy)", flush=True)
    return 0


def status_command(args: argparse.Namespace) -> int:
    status = warm.status(config_from_env())
    if getattr(args, "format", "json") == "text":
        print("\n".join(status_lines(status)))
    else:
        print(json.dumps(status, indent=2, sort_keys=True))
    return 0


def status_lines(status: dict[str, Any]) -> list[str]:
    """``pool status --format text``: the pool, its images, its counters, the fast runs."""
    lines = [f"pool {status.get('name')}: {status.get('ready')} ready, {status.get('booting')} "
             f"booting of {status.get('target')} ({status.get('vcpus')} vCPU / "
             f"{status.get('memory_mib')} MiB, {status.get('accel')})"]
    if status.get("connected") is False:
        lines.append("libvirt connection lost: reconnecting, claims refused meanwhile")
    elif status.get("outages"):
        lines.append(f"libvirt connection lost and healed {status['outages']} times")
    for ref, counts in sorted((status.get("images") or {}).items()):
        lines.append(f"image {ref}: {counts.get('ready')} ready, {counts.get('booting')} "
                     "booting")
    for learned in status.get("learned") or []:
        lines.append(f"learned image {learned.get('image')} (tenant {learned.get('tenant')}): "
                     f"{learned.get('ready')} ready, {learned.get('booting')} booting")
    served = status.get("served_by") or {}
    lines.append(f"claims {status.get('claims')}"
                 + (f" ({', '.join(f'{k} {n}' for k, n in served.items())})" if served else "")
                 + f", boots {status.get('boots')}, failures {status.get('failures')}")
    fast = (status.get("services") or {}).get(RUN_OP)
    if isinstance(fast, dict):
        refused = fast.get("refused") or {}
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        lines.append(f"fast runs: {fast.get('served')} served, {fast.get('failed')} failed, "
                     f"{fast.get('abandoned')} abandoned, {sum(refused.values())} refused"
                     + (f" ({why})" if why else ""))
    else:
        lines.append("fast runs: not served by this pool")
    return lines
