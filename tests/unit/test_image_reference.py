"""Image reference parsing and the insecure-registry rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.errors import ImageError
from hypervm.imageref import (
    ArchiveRef,
    DaemonRef,
    LayoutRef,
    RegistryRef,
    insecure_from_env,
    is_insecure,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("team/app", "docker.io/team/app:latest"),
    ("docker://busybox", "docker.io/library/busybox:latest"),
    ("localhost:5000/app:1", "localhost:5000/app:1"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b/c:v1.0-rc", "127.0.0.1:5000/a/b/c:v1.0-rc"),
    ("quay.io/org/app", "quay.io/org/app:latest"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"reg.example:443/app:1@{DIGEST}", f"reg.example:443/app@{DIGEST}"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
])
def test_registry_refs_normalise(text: str, expected: str) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, RegistryRef)
    assert str(ref) == expected


def test_registry_ref_fields() -> None:
    ref = parse_reference(f"localhost:5000/team/app:1@{DIGEST}")
    assert ref == RegistryRef("localhost:5000", "team/app", "1", DIGEST)
    assert ref.host == "localhost"


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("Busybox", "not a valid repository name"),
    ("busybox:-bad", "not a valid tag"),
    ("busybox@sha256:1234", "not a sha256 digest"),
    ("busybox@md5:" + "a" * 32, "not a sha256 digest"),
    ("a//b", "not a valid repository name"),
])
def test_bad_refs_are_image_errors(text: str, words: str) -> None:
    with pytest.raises(ImageError) as info:
        parse_reference(text)
    assert words in str(info.value)


def test_other_transports(tmp_path: Path) -> None:
    assert parse_reference("docker-daemon:app:1") == DaemonRef("app:1")
    assert parse_reference("docker-daemon:app") == DaemonRef("app:latest")
    assert parse_reference("docker-archive:/x/y.tar") == ArchiveRef(Path("/x/y.tar"))
    assert parse_reference(f"oci:{tmp_path}:v1") == LayoutRef(tmp_path, "v1")
    assert parse_reference(f"oci:{tmp_path}") == LayoutRef(tmp_path, None)
    with pytest.raises(ImageError, match="docker-archive: needs a file"):
        parse_reference("docker-archive:")


@pytest.mark.parametrize("text, listed, insecure", [
    ("localhost:5000/a", (), True),
    ("127.0.0.1:5000/a", (), True),
    ("127.1.2.3:80/a", (), True),
    ("[::1]:5000/a", (), True),
    ("reg.example:5000/a", (), False),
    ("reg.example:5000/a", ("reg.example:5000",), True),
    ("reg.example:5000/a", ("reg.example",), True),
    ("reg.example:5000/a", ("other.example",), False),
    ("busybox", (), False),
    ("10.0.0.1:5000/a", ("10.0.0.2:5000",), False),
])
def test_plain_http_only_for_loopback_and_listed(text: str, listed: tuple[str, ...],
                                                 insecure: bool) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, RegistryRef)
    assert is_insecure(ref, listed) is insecure


def test_insecure_from_env() -> None:
    assert insecure_from_env(None) == ()
    assert insecure_from_env("a:1, b  c") == ("a:1", "b", "c")
