"""The executor imports what a launch needs when it starts, off the launch's clock: the warm
pool's client (a warm launch imported it on its clock, ~10-30 ms) when the pool may serve, the
snapshot start when snapshots are on; nothing is imported between LAUNCH and TASK_RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from executor.mesos.runtime import (
    LAUNCH_MODULES,
    POOL_MODULES,
    SNAPSHOT_MODULES,
    preload_modules,
)
from hypervm.config import HostConfig

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **kw: bool) -> HostConfig:
    return HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                      libvirt_uri="test:///default", accel="tcg", **kw)


def test_the_pool_client_is_preloaded_when_the_pool_may_serve(tmp_path: Path) -> None:
    assert set(POOL_MODULES) <= set(preload_modules(_cfg(tmp_path, use_pool=True)))
    assert not set(POOL_MODULES) & set(preload_modules(_cfg(tmp_path, use_pool=False)))
    assert set(SNAPSHOT_MODULES) <= set(preload_modules(_cfg(tmp_path, use_snapshot=True)))
    assert not set(SNAPSHOT_MODULES) & set(preload_modules(_cfg(tmp_path,
                                                                use_snapshot=False)))
    assert set(LAUNCH_MODULES) <= set(preload_modules(_cfg(tmp_path, use_pool=False)))


#: a fresh interpreter: makes the executor's runtime (test:///default libvirt), then tells
#: which modules of a warm launch's path it has loaded
_PROBE = """
import json, sys
from pathlib import Path
from executor.mesos.runtime import VMRuntime
from hypervm.config import HostConfig
tmp = Path(sys.argv[1])
cfg = HostConfig(state_dir=tmp / "state", run_dir=tmp / "run", libvirt_uri="test:///default",
                 accel="tcg", use_pool=sys.argv[2] == "auto", use_snapshot=sys.argv[2] == "auto")
VMRuntime(cfg, {})
wanted = ("executor.pool.adopt", "executor.pool.claim", "executor.pool.nsbind",
          "executor.guest.channel", "encodings.idna", "executor.snapshot.start")
print(json.dumps([name for name in wanted if name in sys.modules]))
"""


#: "auto": the pool may serve and snapshots are on; "off": neither
@pytest.mark.parametrize("pool", ["auto", "off"])
def test_the_executor_runtime_imports_the_claim_path_when_it_starts(tmp_path: Path,
                                                                   pool: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path), pool], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert "encodings.idna" in loaded
    claim_path = {"executor.pool.adopt", "executor.pool.claim", "executor.pool.nsbind",
                  "executor.guest.channel"}
    if pool == "auto":
        assert claim_path | {"executor.snapshot.start"} <= loaded
    else:
        assert not {"executor.pool.adopt", "executor.pool.nsbind",
                    "executor.snapshot.start"} & loaded


#: a fresh interpreter with the executor's preloaded modules resolves a cached image's user
#: (every launch does, in build_container): which modules that imported
_USER_PROBE = """
import json, sys
from pathlib import Path
from executor.mesos.runtime import LAUNCH_MODULES
import importlib
for name in LAUNCH_MODULES:
    importlib.import_module(name)
from hypervm.config import HostConfig
from vmimage.images.config import ImageConfig
from vmimage.images.store import Image, ImageStore
tmp = Path(sys.argv[1])
cfg = HostConfig(state_dir=tmp / "state", run_dir=tmp / "run", libvirt_uri="test:///default",
                 accel="tcg")
store = ImageStore(cfg)
store.cache.ensure()
diff = "ab" * 32
store.cache.put_layer_meta("sha256:" + diff,
                           {"files": {"etc/passwd": "app:x:1000:1000::/:/bin/sh\\n"}})
before = set(sys.modules)
image = Image("img", "sha256:" + "cd" * 32, (Path(diff + ".erofs"),), ImageConfig())
print(json.dumps([store.resolve_user(image, "app"), sorted(set(sys.modules) - before)]))
"""


def test_a_launchs_user_resolution_imports_nothing(tmp_path: Path) -> None:
    """The user of a cached image is resolved from its layers' meta without importing the
    pull's unpack module (tarfile, gzip: ~3 ms of every warm launch's clock before the claim,
    measured in bench/results/profile-launch-warm-split.txt)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _USER_PROBE, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    user, imported = json.loads(out.splitlines()[-1])
    assert user == [1000, 1000, []]
    assert imported == [], imported
