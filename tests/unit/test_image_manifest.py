"""Manifest and index checks: nothing a source returns is trusted."""

from __future__ import annotations

import json

import pytest

from hypervm.errors import ImageError
from vmimage.images.manifest import (
    DOCKER_LIST,
    OCI_MANIFEST,
    check_digest,
    is_index,
    parse_manifest,
    select_platform,
    sha256_digest,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def manifest(**over: object) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": D1, "size": 10},
           "layers": [{"mediaType": GZ, "digest": D2, "size": 20}]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_manifest() -> None:
    raw = manifest()
    m = parse_manifest("img", sha256_digest(raw), raw)
    assert m.config.digest == D1 and m.config.size == 10
    assert [(layer.digest, layer.size) for layer in m.layers] == [(D2, 20)]
    assert not is_index("img", m.digest, raw)


@pytest.mark.parametrize("raw, words", [
    (b"<html>", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (manifest(schemaVersion=1), "unsupported manifest type"),
    (manifest(config={"digest": "md5:x", "size": 1}), "no sha256 digest"),
    (manifest(layers=[{"mediaType": GZ, "digest": D2, "size": -1}]), "no valid size"),
    (manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                       "digest": D2, "size": 1}]), "unsupported layer type"),
    (manifest(layers="nope"), "no layers list"),
])
def test_bad_manifests_name_image_and_blob(raw: bytes, words: str) -> None:
    with pytest.raises(ImageError) as info:
        parse_manifest("reg/img:1", D3, raw)
    message = str(info.value)
    assert words in message and "reg/img:1" in message and "sha256:" in message


def test_select_platform() -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D1, "size": 5,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": OCI_MANIFEST, "digest": D2, "size": 6,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()
    assert is_index("img", D3, raw)
    assert select_platform("img", D3, raw).digest == D2
    arm_only = json.dumps({"manifests": [{"digest": D1, "size": 5, "platform": {
        "os": "linux", "architecture": "arm64"}}]}).encode()
    assert is_index("img", D3, arm_only)  # OCI indexes may omit mediaType
    with pytest.raises(ImageError, match="no linux/amd64 image .*linux/arm64"):
        select_platform("img", D3, arm_only)


def test_check_digest() -> None:
    check_digest("img", "manifest", sha256_digest(b"x"), b"x")
    with pytest.raises(ImageError) as info:
        check_digest("img", "manifest", D1, b"x")
    assert D1 in str(info.value) and sha256_digest(b"x") in str(info.value)
