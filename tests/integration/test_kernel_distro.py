"""The distro-kernel fallback boots: its modules, in hypervm.order, load and give virtio + erofs.

Uses the Debian kernel already in /boot (the test never installs packages: it skips without
one). The initrd is built by vmimage.initrd's own entry builder, so the module layout and the
order file are exactly what the real init gets; the stand-in /init is a busybox script that
insmods every listed module, mounts an erofs layer from a virtio disk and powers off.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hypervm.config import config_from_env
from vmimage.initrd import CpioEntry, initrd_entries, newc_archive
from vmimage.kernel import distro, ensure_kernel
from vmimage.rootfs import build_layer_image

from .test_kernel_boot import BUSYBOX, QBOOT, QEMU, boot  # noqa: F401  (fixture)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MARK = "HYPERVM-DISTRO-OK"

SCRIPT = f"""\
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /layer
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /lib/modules/hypervm.order); do insmod "$m" || echo "INSMOD-FAILED $m"; done
mount -t devtmpfs devtmpfs /dev
mount -t erofs -o ro /dev/vda /layer && echo "{MARK} $(uname -r) $(cat /layer/hello)"
poweroff -f
"""


def test_distro_kernel_boots_with_its_modules(boot, tmp_path: Path) -> None:  # noqa: ANN001, F811
    import shutil

    if shutil.which(QEMU) is None or not QBOOT.exists():
        pytest.skip("qemu-system-x86 with qboot not installed")
    if distro.pick_release() is None:
        pytest.skip("no distro kernel in /boot (HYPERVM_KERNEL=distro make kernel installs one)")
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state")})
    kernel = ensure_kernel(cfg, env={"HYPERVM_KERNEL": "distro"})
    assert kernel.kind == "distro" and kernel.modules
    modules = [(m.name, m.read_bytes()) for m in kernel.modules]
    entries = initrd_entries(("#!/bin/busybox sh\n" + SCRIPT).encode(), modules)
    entries += [CpioEntry.directory("bin"),
                CpioEntry.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(newc_archive(entries))
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "hello").write_text("from-erofs\n")
    disk = build_layer_image(layer, tmp_path / "layer.erofs")
    guest = boot(kernel, initrd, disks=(disk,))
    match = guest.wait_for(rf"{MARK} (\S+) (\S+)", timeout=120)
    seconds = time.monotonic() - guest.started
    guest.wait_exit(timeout=60)
    assert match.group(1) == kernel.version and match.group(2) == "from-erofs"
    assert "INSMOD-FAILED" not in guest.console(), guest.console()[-3000:]
    print(f"\ndistro kernel {kernel.version}: {len(modules)} modules, erofs mounted after "
          f"{seconds:.1f} s")
