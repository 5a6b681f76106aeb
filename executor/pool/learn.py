"""The images a warm pool learned (``hypervm pool serve --learn-images N``): the N images most
recently claimed through it, each kept for the tenant that claimed it, so the next run of the
same image gets an image VM (its layers attached, its container prepared up to the START)
instead of a generic VM whose START does the whole container.

Pure bookkeeping; the daemon (executor.pool.daemon) holds its lock around it, boots the VMs
(resolving a learned image from the cache only: never pulled on a client's behalf) and destroys
the idle VMs of a forgotten image.

- A learned image is keyed by (tenant, reference): its VMs serve only that tenant's pods, and
  only pods whose layers are exactly the image's (``pick_vm``); one tenant's runs never make
  the pool keep a VM another tenant could get, nor show up in what another tenant can see.
- At most ``limit`` images (the oldest claimed forgotten first); an image the operator listed
  (``--image``) is pinned and never learned twice.
- Only registry references are learned: a local source (docker-archive:, oci:) is read again
  at each run, it has no cached state to boot from.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator, Mapping

from hypervm.errors import ImageError, InvalidSpec
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import RegistryRef, parse_reference

log = logging.getLogger(__name__)

#: at most this many learned images (each keeps ``per_image`` idle VMs)
MAX_LEARN_IMAGES = 16
#: ``hypervm pool serve``'s default (HYPERVM_POOL_LEARN_IMAGES): a platform team's few everyday
#: images, at ~50 MiB per idle VM (README "Image VMs")
DEFAULT_LEARN_IMAGES = 4
LEARN_ENV = "HYPERVM_POOL_LEARN_IMAGES"
#: the longest image reference a claim may name
MAX_REF = 512


@frozen_dataclass
class LearnedImage:
    tenant: str
    ref: str

    @property
    def kind(self) -> str:
        """Its VMs' kind in the pool: never an image reference (those have no space), so a
        learned image never shares its VMs with a listed one, nor one tenant's with another's."""
        return f"{self.ref} learned for {self.tenant}"


def canonical_ref(ref: str) -> str | None:
    """``ref`` as the image cache names it, when the pool may learn it (a registry reference);
    None otherwise."""
    if len(ref) > MAX_REF:
        return None
    try:
        parsed = parse_reference(ref)
    except ImageError:
        return None
    return str(parsed) if isinstance(parsed, RegistryRef) else None


def learn_images_from_env(env: Mapping[str, str]) -> int:
    """HYPERVM_POOL_LEARN_IMAGES: 0..MAX_LEARN_IMAGES (0: learn none)."""
    value = env.get(LEARN_ENV, "").strip()
    if not value:
        return DEFAULT_LEARN_IMAGES
    if not value.isdigit() or int(value) > MAX_LEARN_IMAGES:
        raise InvalidSpec(LEARN_ENV, f"{value!r} is not 0..{MAX_LEARN_IMAGES}",
                          hint="e.g. 4: the 4 images run last keep warm VMs; 0: none")
    return int(value)


def learn_images_for(env: Mapping[str, str], given: int | None, fixed: int, per_image: int,
                     most: int) -> int:
    """``pool serve``'s learned images: ``--learn-images`` when ``given``, else the setting, an
    operator's own value as it is (PoolConfig.validate refuses too many). The built-in default
    only adds to a pool of ``fixed`` > 0 idle VMs (generic and listed), and only as many as fit
    in ``most`` in all: ``--size 0`` alone stays the error it was, ``--size 64`` valid; a pool
    of learned VMs only is asked for with ``--learn-images``."""
    if given is not None:
        return given
    learn = learn_images_from_env(env)
    if env.get(LEARN_ENV, "").strip():
        return learn
    return max(0, min(learn, (most - fixed) // max(1, per_image))) if fixed else 0


class LearnedImages:
    """The learned images, most recently claimed last."""

    def __init__(self, limit: int, pinned: Iterable[str] = ()) -> None:
        self.limit = limit
        self._pinned = {canonical_ref(ref) or ref for ref in pinned}
        self._images: collections.OrderedDict[str, LearnedImage] = collections.OrderedDict()

    def note(self, tenant: str, ref: str) -> set[str]:
        """A claim of ``ref`` by ``tenant``: learn it (unless pinned or not learnable), or
        make it the most recent; the kinds of the images forgotten to keep the bound."""
        canonical = canonical_ref(ref)
        if self.limit <= 0 or canonical is None or canonical in self._pinned:
            return set()
        image = LearnedImage(tenant, canonical)
        if image.kind in self._images:
            self._images.move_to_end(image.kind)
            return set()
        self._images[image.kind] = image
        log.info("learned image %s for tenant %s", image.ref, image.tenant)
        forgotten = set()
        while len(self._images) > self.limit:
            kind, old = self._images.popitem(last=False)
            log.info("forgot image %s of tenant %s (%d learned at most)", old.ref, old.tenant,
                     self.limit)
            forgotten.add(kind)
        return forgotten

    def forget(self, kind: str) -> LearnedImage | None:
        """Forget one (e.g. no longer in the cache): the image, or None if it was not known."""
        return self._images.pop(kind, None)

    def get(self, kind: str) -> LearnedImage | None:
        return self._images.get(kind)

    def __iter__(self) -> Iterator[LearnedImage]:
        return iter(list(self._images.values()))

    def __len__(self) -> int:
        return len(self._images)
