"""Make an OCI image layout from a root filesystem directory, with umoci.

Used by ``hypervm demo`` (which has no registry to pull from) and usable for local images:
the result is an ``oci:DIR:TAG`` reference the image store pulls like any other.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypervm.errors import ImageError

log = logging.getLogger(__name__)


def _umoci(ref: str, *args: str) -> None:
    try:
        subprocess.run(["umoci", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ImageError(ref, "umoci is not installed", hint="apt-get install umoci") from e
    except subprocess.CalledProcessError as e:
        raise ImageError(ref, f"umoci {args[0]} failed: {e.stderr.strip()}") from e


def layout_from_rootfs(rootfs: Path, layout: Path, tag: str, *,
                       entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
                       env: Sequence[str] = (), working_dir: str = "/") -> str:
    """Write ``layout`` (replacing it whole, atomically) holding ``rootfs`` as image ``tag``;
    returns the ``oci:LAYOUT:TAG`` reference."""
    ref = f"oci:{layout}:{tag}"
    if not rootfs.is_dir():
        raise ImageError(ref, f"{rootfs} is not a directory")
    layout.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.parent, prefix=".layout-") as tmp:
        staging, bundle = Path(tmp) / "layout", Path(tmp) / "bundle"
        image = f"{staging}:{tag}"
        _umoci(ref, "init", "--layout", str(staging))
        _umoci(ref, "new", "--image", image)
        _umoci(ref, "unpack", "--image", image, str(bundle))
        shutil.copytree(rootfs, bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
        _umoci(ref, "repack", "--image", image, str(bundle))
        config = [f"--config.workingdir={working_dir}"]
        config += [f"--config.entrypoint={arg}" for arg in entrypoint]
        config += [f"--config.cmd={arg}" for arg in cmd]
        config += [f"--config.env={item}" for item in env]
        _umoci(ref, "config", "--image", image, *config)
        if layout.exists():
            shutil.rmtree(layout)
        staging.rename(layout)
    log.info("wrote %s from %s", ref, rootfs)
    return ref
