"""The one launch path: an image reference and the caller's overrides become a running
HyperVM, cold or from the warm pool, the same way for ``hypervm run``, the Mesos executor and
the pool daemon.

- one image store per launcher, made by ``ImageStore.from_env`` (so every caller honours
  HYPERVM_INSECURE_REGISTRIES and the same credentials);
- the gc hold: :meth:`Launcher.hold` keeps ``hypervm gc --images`` from removing the layers a
  launch resolved until its VM runs (a running VM's disks are in use for gc);
- the image's process by Docker's rules (hypervm.imageprocess), whatever the front end;
- :func:`boot_vm`: a pool VM when one serves the pod's shape, else a start from the snapshot
  of its shape (``HYPERVM_SNAPSHOT=on``), else a cold boot.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping

from executor.vm import DEFAULT_BOOT_TIMEOUT, HyperVM
from hypervm.config import HostConfig
from hypervm.imageprocess import image_process
from hypervm.podspec import PodSpec, Process
from vmimage.boot import BootFiles
from vmimage.images import Image, ImageStore

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vmimage.images.authorize import PullAuth

log = logging.getLogger(__name__)


def boot_vm(cfg: HostConfig, pod: PodSpec, *, hypervisor: Any = None, accel: str | None = None,
            boot_files: BootFiles | None = None, timeout: float = DEFAULT_BOOT_TIMEOUT,
            created: Callable[[HyperVM], None] | None = None,
            before_shares: Callable[[tuple[int, int] | None], None] | None = None,
            booting: Callable[[], object] | None = None) -> HyperVM:
    """A booted HyperVM running nothing yet: claimed from the warm pool when one serves and
    the pod fits it (``HYPERVM_POOL=auto``), else started from the snapshot of its shape
    (``HYPERVM_SNAPSHOT=on``, pods with a NIC), else booted cold. The caller
    destroys it. ``created`` gets the VM before its cold boot (or once claimed or started
    from a snapshot), so another thread can
    destroy it meanwhile; an exception from it destroys the VM and propagates.
    ``before_shares``: see HyperVM (called with the VM's QEMU uid:gid before its shares are
    given to it, cold or claimed). ``booting``: what the caller needs once the VM is booted and
    not before (its imports: issue 17), done while a cold guest boots (see HyperVM), else right
    after ``created``; an exception from it destroys the VM and propagates."""
    if cfg.use_pool and cfg.pool_socket.exists():
        # optional: only a claim needs the pool's client (~7 ms of a cold run's imports)
        from executor.pool.adopt import claim_vm

        vm = claim_vm(cfg, pod, hypervisor=hypervisor, timeout=timeout,
                      before_shares=before_shares)
        if vm is not None:
            _announce(vm, created, booting)
            return vm
    if cfg.use_snapshot:
        # optional: only HYPERVM_SNAPSHOT=on starts from snapshots (~2 ms of a cold run's)
        from executor.snapshot.start import start_vm

        vm = start_vm(cfg, pod, hypervisor=hypervisor, timeout=timeout, boot_files=boot_files,
                      accel=accel, before_shares=before_shares)
        if vm is not None:
            _announce(vm, created, booting)
            return vm
    vm = HyperVM(cfg, pod, hypervisor=hypervisor, accel=accel, boot_files=boot_files,
                 before_shares=before_shares, booting=booting)
    _announce(vm, created)
    vm.boot(timeout=timeout)
    return vm


def _announce(vm: HyperVM, created: Callable[[HyperVM], None] | None,
              booting: Callable[[], object] | None = None) -> None:
    if created is None and booting is None:
        return
    try:
        if created is not None:
            created(vm)
        if booting is not None:
            booting()
    except BaseException:
        vm.destroy()
        raise


class Launcher:
    """Images and VMs for one front end (the CLI, the Mesos executor, the pool daemon)."""

    def __init__(self, cfg: HostConfig, env: Mapping[str, str] | None = None, *,
                 insecure_registries: Iterable[str] = (),
                 progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.images = ImageStore.from_env(cfg, env, insecure_registries=insecure_registries,
                                          progress=progress)

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Hold it from the image resolve until the VM is booted: ``hypervm gc`` then cannot
        remove the launch's layers in between."""
        return self.images.hold()

    def resolve(self, ref: str, policy: str = "missing", auth: PullAuth | None = None) -> Image:
        """The image for ``ref`` (pulled when missing, or always with ``policy="always"``);
        ``auth``: a tenant's pull, whose cache hits the registry must authorize."""
        return self.images.resolve(ref, policy, auth)

    def user_resolver(self, image: Image) -> Callable[[str], tuple[int, int, tuple[int, ...]]]:
        """``user[:group]`` → ids through the image's /etc/passwd and /etc/group."""
        return lambda spec: self.images.resolve_user(image, spec)

    def process(self, image: Image, **overrides: Any) -> Process:
        """The image's process with the caller's overrides (hypervm.imageprocess)."""
        return image_process(image.config, self.user_resolver(image), image_name=image.ref,
                             **overrides)
