"""Test images, built here from nothing but the host's busybox-static (no Docker Hub).

Layers are written as tars in Python and assembled into OCI image layouts; :func:`push` copies
a layout into a registry with skopeo. Builds are deterministic (fixed mtimes, gzip mtime 0), so
the same image always has the same digests.

- :func:`busybox_base`: one layer, static busybox + applet symlinks + /etc/passwd and group;
- :func:`multilayer`: base + a layer adding files + a layer with whiteouts and an opaque dir
  (:data:`MULTILAYER_EXPECTED` is the merged tree the OCI spec defines);
- :func:`user_image`: base + a layer with more users/groups, ``User: app``.

For using pulled images: :func:`private_store` (an ImageStore on a throw-away state dir that
libvirt-qemu can read), :func:`mounted` (erofs layers + overlayfs on the host, as the guest
combines them) and :func:`check_multilayer_tree`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervm.config import HostConfig
from vmimage.images import ImageStore

BUSYBOX = Path("/bin/busybox")
MTIME = 1_700_000_000
APPLETS = ("sh", "ls", "cat", "echo", "id", "true", "false", "env", "sleep", "stat")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chardev
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)


def layer_tar(entries: Sequence[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, MTIME
            info.uname = info.gname = ""
            if entry.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                     "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                     "chardev": tarfile.CHRTYPE}
            if entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
                continue
            info.type = types[entry.kind]
            info.linkname = entry.target
            tar.addfile(info)
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BuiltImage:
    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def write_layout(layout: Path, tag: str, layers: Sequence[bytes], config: dict,
                 *, compress: bool = True, blob_override: dict[int, bytes] | None = None
                 ) -> BuiltImage:
    """Write an OCI image layout with one image; ``blob_override[i]`` replaces layer i's blob
    (its digest and size in the manifest are those of the replacement)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def put(data: bytes) -> str:
        digest = _digest(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    descs: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for i, tar in enumerate(layers):
        diff_ids.append(_digest(tar))
        blob = gzip.compress(tar, mtime=0) if compress else tar
        if blob_override and i in blob_override:
            blob = blob_override[i]
        media = ("application/vnd.oci.image.layer.v1.tar+gzip" if compress
                 else "application/vnd.oci.image.layer.v1.tar")
        descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
    full_config = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": config, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(full_config, sort_keys=True).encode()
    config_digest = put(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": descs,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = put(manifest_bytes)
    index_path = layout / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {
        "schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                          != tag]
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    })
    index_path.write_text(json.dumps(index))
    return BuiltImage(layout, tag, manifest_digest, config_digest,
                      tuple(d["digest"] for d in descs), tuple(diff_ids))


def busybox_entries() -> list[Entry]:
    entries = [Entry("bin", "dir", mode=0o755), Entry("etc", "dir", mode=0o755),
               Entry("tmp", "dir", mode=0o1777), Entry("root", "dir", mode=0o700),
               Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)]
    entries += [Entry(f"bin/{a}", "symlink", target="busybox", mode=0o777) for a in APPLETS]
    entries += [Entry("etc/passwd", data=PASSWD.encode()), Entry("etc/group", data=GROUP.encode())]
    return entries


BASE_CONFIG = {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}


def busybox_base(layout: Path, tag: str = "base") -> BuiltImage:
    return write_layout(layout, tag, [layer_tar(busybox_entries())], BASE_CONFIG)


#: layers 2 and 3 of :func:`multilayer`
LAYER2 = [
    Entry("data", "dir", mode=0o755),
    Entry("data/keep.txt", data=b"keep\n"),
    Entry("data/gone.txt", data=b"gone\n"),
    Entry("data/gonedir", "dir", mode=0o755),
    Entry("data/gonedir/inner.txt", data=b"inner\n"),
    Entry("opq", "dir", mode=0o755),
    Entry("opq/old.txt", data=b"old\n"),
    Entry("opq/sub", "dir", mode=0o755),
    Entry("opq/sub/deep.txt", data=b"deep\n"),
    Entry("suid", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
    Entry("owned.txt", data=b"owned\n", mode=0o640, uid=1234, gid=5678,
          xattrs={"user.hypervm": "layer2"}),
    Entry("hard-a", data=b"linked\n"),
    Entry("hard-b", "hardlink", target="hard-a"),
    Entry("abs-link", "symlink", target="/etc/passwd", mode=0o777),
    Entry("fifo", "fifo", mode=0o600),
    Entry("null-dev", "chardev", mode=0o666),
]
LAYER3 = [
    Entry("data", "dir", mode=0o755),
    Entry("data/.wh.gone.txt"),
    Entry("data/.wh.gonedir"),
    Entry("data/new.txt", data=b"new\n"),
    Entry("opq", "dir", mode=0o750),
    Entry("opq/.wh..wh..opq"),
    Entry("opq/fresh.txt", data=b"fresh\n"),
    Entry("bin/.wh.stat"),
    Entry("data/.wh.same.txt"),  # whiteout and file of the same layer: the file stays
    Entry("data/same.txt", data=b"same\n"),
]

#: the merged tree of :func:`multilayer` for the paths the layers touch (path → kind or data)
MULTILAYER_EXPECTED: dict[str, str | bytes | None] = {
    "data": "dir", "data/keep.txt": b"keep\n", "data/gone.txt": None, "data/gonedir": None,
    "data/new.txt": b"new\n", "data/same.txt": b"same\n",
    "opq": "dir", "opq/old.txt": None, "opq/sub": None, "opq/fresh.txt": b"fresh\n",
    "bin/stat": None, "bin/ls": "symlink", "suid": b"#!/bin/sh\n", "owned.txt": b"owned\n",
    "hard-a": b"linked\n", "hard-b": b"linked\n", "abs-link": "symlink", "fifo": "fifo",
    "null-dev": None,
}


def multilayer(layout: Path, tag: str = "multi") -> BuiltImage:
    layers = [layer_tar(busybox_entries()), layer_tar(LAYER2), layer_tar(LAYER3)]
    return write_layout(layout, tag, layers, {**BASE_CONFIG, "WorkingDir": "/data"})


USER_PASSWD = PASSWD + "app:x:1000:1000:app:/home/app:/bin/sh\nsvc:x:1001:1001::/:/bin/sh\n"
USER_GROUP = GROUP + "app:x:1000:\nsvc:x:1001:\nshared:x:2000:app,svc\naudio:x:29:app\n"


def user_image(layout: Path, tag: str = "user") -> BuiltImage:
    layer = [Entry("etc", "dir", mode=0o755),
             Entry("etc/passwd", data=USER_PASSWD.encode()),
             Entry("etc/group", data=USER_GROUP.encode()),
             Entry("home", "dir", mode=0o755),
             Entry("home/app", "dir", mode=0o700, uid=1000, gid=1000)]
    config = {**BASE_CONFIG, "User": "app", "WorkingDir": "/home/app",
              "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["id"], "Env": ["PATH=/bin", "A=1"]}
    return write_layout(layout, tag, [layer_tar(busybox_entries()), layer_tar(layer)], config)


def push(image: BuiltImage, registry_host: str, name: str, tag: str | None = None,
         *, fmt: str | None = None, creds: str | None = None) -> str:
    """skopeo copy the layout's image to ``registry_host/name:tag``; returns that ref."""
    ref = f"{registry_host}/{name}:{tag or image.tag}"
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if fmt:
        argv += ["--format", fmt]
    if creds:
        argv += ["--dest-creds", creds]
    subprocess.run([*argv, image.oci_ref, f"docker://{ref}"], check=True, capture_output=True)
    return ref


def save_docker_archive(image: BuiltImage, dest: Path, name: str) -> Path:
    """A `docker save`-style archive of the image (via skopeo)."""
    subprocess.run(["skopeo", "copy", "--quiet", image.oci_ref,
                    f"docker-archive:{dest}:{name}"], check=True, capture_output=True)
    return dest


def write_index(layout: Path, tag: str, entries: Sequence[tuple[BuiltImage, str]]) -> str:
    """Point ``tag`` of the layout at an OCI index of images (image, "os/arch"); returns the
    index digest. The images must live in the same layout."""
    manifests = []
    for image, platform in entries:
        blob = layout / "blobs/sha256" / image.manifest_digest.split(":")[1]
        os_name, arch = platform.split("/")
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": image.manifest_digest, "size": blob.stat().st_size,
                          "platform": {"os": os_name, "architecture": arch}})
    data = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests}, sort_keys=True).encode()
    digest = _digest(data)
    (layout / "blobs/sha256" / digest.split(":")[1]).write_bytes(data)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
        "size": len(data), "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))
    return digest


def push_all(layout: Path, tag: str, registry_host: str, name: str) -> str:
    """skopeo copy --all (an index with every image it lists)."""
    ref = f"{registry_host}/{name}:{tag}"
    subprocess.run(["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false",
                    f"oci:{layout}:{tag}", f"docker://{ref}"], check=True, capture_output=True)
    return ref


# --- using pulled images in tests ----------------------------------------------------


def make_state_dir() -> Path:
    # not under /root nor a 0700 temp dir: QEMU (libvirt-qemu) must be able to read layers
    path = Path(tempfile.mkdtemp(prefix="hypervm-imgtest-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def private_store(**kwargs: object) -> Iterator[ImageStore]:
    state = make_state_dir()
    try:
        cfg = HostConfig(state_dir=state, run_dir=state / "run", libvirt_uri="test:///default",
                         accel="tcg")
        yield ImageStore(cfg, **kwargs)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def mounted(layers: tuple[Path, ...], workdir: Path) -> Iterator[Path]:
    """The layers as the guest combines them: erofs loop mounts under a read-only overlay."""
    mounts: list[Path] = []
    try:
        lowers = []
        for i, layer in enumerate(layers):
            point = workdir / f"l{i}"
            point.mkdir()
            subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(layer), str(point)],
                           check=True, capture_output=True)
            mounts.append(point)
            lowers.append(str(point))
        merged = workdir / "merged"
        merged.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "ro,lowerdir=" + ":".join(reversed(lowers)), str(merged)],
                       check=True, capture_output=True)
        mounts.append(merged)
        yield merged
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", str(point)], check=False, capture_output=True)


def check_multilayer_tree(root: Path) -> None:
    for name, want in MULTILAYER_EXPECTED.items():
        path = root / name
        if want is None:
            assert not os.path.lexists(path), f"{name} should be hidden"
        elif want == "dir":
            assert path.is_dir() and not path.is_symlink(), name
        elif want == "symlink":
            assert path.is_symlink(), name
        elif want == "fifo":
            assert stat.S_ISFIFO(os.lstat(path).st_mode), name
        else:
            assert path.read_bytes() == want, name
    assert sorted(os.listdir(root / "opq")) == ["fresh.txt"]
    assert sorted(os.listdir(root / "data")) == ["keep.txt", "new.txt", "same.txt"]
    assert stat.S_IMODE(os.lstat(root / "opq").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
    st = os.lstat(root / "owned.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert os.getxattr(root / "owned.txt", "user.hypervm") == b"layer2"
    assert os.lstat(root / "hard-a").st_ino == os.lstat(root / "hard-b").st_ino
    assert os.readlink(root / "abs-link") == "/etc/passwd"
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert (root / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
