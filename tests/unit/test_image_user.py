"""User resolution through the image's /etc/passwd and /etc/group, and config parsing."""

from __future__ import annotations

import json

import pytest

from hypervm.errors import ImageError
from vmimage.images.config import parse_config, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
svc:x:1001:1001::/:/bin/sh
# comment
broken line
"""
GROUP = """root:x:0:
app:x:1000:
shared:x:2000:app,svc
audio:x:29:app
web:x:33:
"""


@pytest.mark.parametrize("spec, expected", [
    ("", (0, 0, ())),
    ("root", (0, 0, ())),
    ("app", (1000, 1000, (2000, 29))),
    ("svc", (1001, 1001, (2000,))),
    ("1000", (1000, 1000, (2000, 29))),
    ("4242", (4242, 0, ())),
    ("app:web", (1000, 33, ())),
    ("app:77", (1000, 77, ())),
    ("4242:4343", (4242, 4343, ())),
])
def test_resolve_user(spec: str, expected: tuple[int, int, tuple[int, ...]]) -> None:
    assert resolve_user("img", spec, PASSWD, GROUP) == expected


def test_unknown_user_names_the_image_and_the_fix() -> None:
    with pytest.raises(ImageError) as info:
        resolve_user("reg/img:1", "nobody", PASSWD, GROUP)
    assert "reg/img:1" in str(info.value) and "'nobody'" in str(info.value)
    assert "numeric" in str(info.value)


def test_unknown_group() -> None:
    with pytest.raises(ImageError, match="group 'staff'"):
        resolve_user("img", "app:staff", PASSWD, GROUP)


def test_no_passwd_only_numeric() -> None:
    assert resolve_user("img", "5:6", None, None) == (5, 6, ())
    with pytest.raises(ImageError, match="has none"):
        resolve_user("img", "app", None, None)


def test_parse_config() -> None:
    diff = "sha256:" + "1" * 64
    raw = json.dumps({"config": {"Entrypoint": ["/e"], "Cmd": ["c", "d"], "Env": ["A=1"],
                                 "WorkingDir": "w", "User": "app:web"},
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    parsed = parse_config("img", "sha256:" + "0" * 64, raw)
    assert parsed.diff_ids == (diff,)
    c = parsed.config
    assert (c.entrypoint, c.cmd, c.env, c.working_dir, c.user) == (
        ("/e",), ("c", "d"), ("A=1",), "/w", "app:web")
    empty = parse_config("img", "sha256:" + "0" * 64, b'{"rootfs": {"diff_ids": []}}').config
    assert (empty.entrypoint, empty.cmd, empty.working_dir, empty.user) == ((), (), "/", "")


def test_bad_config_names_the_blob() -> None:
    blob = "sha256:" + "9" * 64
    with pytest.raises(ImageError) as info:
        parse_config("img", blob, b'{"config": {"Cmd": "not a list"}}')
    assert blob in str(info.value) and "Cmd" in str(info.value)
