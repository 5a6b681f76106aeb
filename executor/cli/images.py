"""``hypervm pull IMAGE`` and ``hypervm images``: fill and list the shared image cache.

Progress goes to stderr (skopeo's bars on a terminal, plain lines otherwise); stdout carries
only the result: ``REF DIGEST`` for pull, the table for images.
"""

from __future__ import annotations

import argparse
import sys

from hypervm.config import config_from_env
from vmimage.images import ImageStore


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def _stderr_line(message: str) -> None:
    print(f"hypervm: {message}", file=sys.stderr, flush=True)


def _store(args: argparse.Namespace) -> ImageStore:
    return ImageStore.from_env(config_from_env(),
                               insecure_registries=getattr(args, "insecure_registry", None) or (),
                               progress=None if getattr(args, "quiet", False) else _stderr_line)


def pull_command(args: argparse.Namespace) -> int:
    image = _store(args).pull(args.image)
    print(f"{image.ref} {image.digest}")
    return 0


def images_command(args: argparse.Namespace) -> int:
    report = _store(args).size_report()
    width = max([len("REFERENCE")] + [len(i.ref) for i in report.images])
    print(f"{'REFERENCE':<{width}}  {'DIGEST':<19}  LAYERS  SIZE")
    for item in report.images:
        print(f"{item.ref:<{width}}  {item.digest[:19]:<19}  {item.layers:>6}  "
              f"{_human(item.size)}")
    print(f"cache: {report.layers} layer images, {_human(report.layer_bytes)}; "
          f"{_human(report.total_bytes)} on disk in total")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    pull = subparsers.add_parser(
        "pull", help="fetch an image into the shared layer cache",
        description="Fetch IMAGE (registry ref, docker-daemon:NAME, docker-archive:FILE or "
                    "oci:DIR[:TAG]) into the layer cache; prints REF DIGEST.")
    pull.add_argument("image", metavar="IMAGE")
    pull.add_argument("-q", "--quiet", action="store_true",
                      help="no progress on stderr (no skopeo bars either)")
    pull.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                      help="allow plain HTTP for this registry (repeatable; also "
                           "HYPERVM_INSECURE_REGISTRIES); loopback registries always are")
    pull.set_defaults(func=pull_command)
    images = subparsers.add_parser("images", help="list cached images and the cache size")
    images.set_defaults(func=images_command)
