"""The transport: skopeo fetches manifests and blobs from every source kind (one wrapper).

Why skopeo and not our own registry client: it already speaks token and basic auth, TLS,
mirrors, redirects, docker-archive and OCI layouts, and it verifies blob digests while copying.
It cannot fetch one blob, so :func:`copy_blobs` copies into an OCI layout whose ``blobs/``
already holds empty placeholders for every blob the cache has: skopeo's OCI destination
reuses any blob file that exists, so only the missing blobs cross the network. (Its ``dir:``
destination would keep bytes exactly but empties the directory first; its ``oci:`` destination
rewrites Docker schema-2 configs, so those configs are read with ``inspect --config --raw``, and
gzips plain-tar layers, so local sources, which cost no network, are copied with ``dir:``.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hypervm.errors import HostError, ImageError
from hypervm.imageref import DIGEST_RE

log = logging.getLogger(__name__)

SKOPEO = "skopeo"
#: a manifest or config read that takes longer than this is a dead registry, not a slow one
INSPECT_TIMEOUT = "2m"
#: skopeo retries only what it deems transient (network errors, 5xx), never a bad digest;
#: backoff 1 s, 2 s, 4 s: a registry that is down costs ~3 s before the error, not minutes
RETRIES = "3"
INSPECT_RETRIES = "2"
#: our own bound on an inspect, should skopeo's --command-timeout not fire (seconds)
INSPECT_BACKSTOP_S = 150.0
#: how often a running copy is looked at (its ``watch`` callback), seconds
WATCH_EVERY_S = 0.5
_MSG_RE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def _hint(message: str) -> str | None:
    lowered = message.lower()
    if "server gave http response to https client" in lowered:
        return "the registry speaks plain HTTP: list it with --insecure-registry HOST:PORT"
    if "unauthorized" in lowered or "authentication required" in lowered or "denied" in lowered:
        return "log in first (docker login writes ~/.docker/config.json) or check the name"
    if "manifest unknown" in lowered or "name unknown" in lowered or "not found" in lowered:
        return "check the repository name and tag"
    if "connection refused" in lowered or "no such host" in lowered or "timeout" in lowered:
        return "check that the registry is reachable from this host"
    if "digest" in lowered and ("match" in lowered or "mismatch" in lowered):
        return "the source is corrupt or was changed during the pull; retry"
    return None


def _run(image: str, argv: Sequence[str], *, show_progress: bool = False,
         timeout: float = INSPECT_BACKSTOP_S, watch: Callable[[], None] | None = None,
         blob: str | None = None, authfile: Path | None = None) -> bytes:
    """Run skopeo; ``timeout`` bounds it (then its process group is killed), ``watch`` is
    called every WATCH_EVERY_S while it runs and may raise to stop it; with ``authfile``,
    skopeo sees no other credentials (:func:`_only_authfile_env`)."""
    full = [SKOPEO, *argv]
    log.debug("running %s", " ".join(full))
    stdout = sys.stderr if show_progress else subprocess.PIPE
    try:
        proc = subprocess.Popen(full, stdout=stdout, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=_only_authfile_env(authfile))
    except FileNotFoundError as e:
        raise HostError("skopeo is not installed", hint="apt-get install skopeo (make deps)") from e
    try:
        out, err = _wait(image, proc, timeout, watch, blob)
    except BaseException:
        _kill(proc)
        raise
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip()
        found = _MSG_RE.findall(text)
        message = found[-1].replace('\\"', '"') if found else (text.splitlines() or ["?"])[-1]
        digests = DIGEST_RE.findall(message)
        raise ImageError(image, f"skopeo failed: {message}",
                         blob=digests[0] if digests else blob, hint=_hint(message))
    return out if not show_progress and out is not None else b""


def _wait(image: str, proc: subprocess.Popen[bytes], timeout: float,
          watch: Callable[[], None] | None, blob: str | None) -> tuple[bytes, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageError(image, f"the transfer did not finish within {timeout:g} s; "
                             "stopped", blob=blob,
                             hint="the registry is stalled or too slow; retry, or the operator "
                                  "raises HYPERVM_IMAGE_PULL_TIMEOUT")
        try:
            return proc.communicate(timeout=min(WATCH_EVERY_S, left))
        except subprocess.TimeoutExpired:
            if watch is not None:
                watch()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End skopeo and whatever it started (its own session), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)


def _only_authfile_env(authfile: Path | None) -> dict[str, str] | None:
    """With an auth file, the environment in which skopeo finds no other credentials: skopeo
    1.9 reads $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json (or
    ~/.docker/config.json) and ~/.dockercfg after ``--authfile``, so a tenant's anonymous
    pull would otherwise go out with the host's credentials. They all point into the auth
    file's own (private, per-pull) directory, where none of those files exist."""
    if authfile is None:
        return None
    private = str(authfile.parent)
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY_AUTH_FILE"}
    env.update(HOME=private, DOCKER_CONFIG=private, XDG_RUNTIME_DIR=private,
               XDG_CONFIG_HOME=private)
    return env


def _tls(flag: str, insecure: bool) -> list[str]:
    return [f"--{flag}=false"] if insecure else []


def _auth(authfile: Path | None, flag: str = "authfile") -> list[str]:
    return [f"--{flag}", str(authfile)] if authfile else []


def inspect_raw(image: str, source: str, *, insecure: bool = False,
                authfile: Path | None = None) -> bytes:
    """The raw manifest (or manifest list) bytes: no blob is fetched."""
    return _run(image, ["--command-timeout", INSPECT_TIMEOUT, "inspect", "--raw",
                        "--retry-times", INSPECT_RETRIES, *_tls("tls-verify", insecure),
                        *_auth(authfile), source], authfile=authfile)


def inspect_config(image: str, source: str, *, insecure: bool = False,
                   authfile: Path | None = None) -> bytes:
    """The raw image config blob (one blob GET)."""
    return _run(image, ["--command-timeout", INSPECT_TIMEOUT, "inspect", "--config", "--raw",
                        "--retry-times", INSPECT_RETRIES, *_tls("tls-verify", insecure),
                        *_auth(authfile), source], authfile=authfile)


def prepare_layout(layout: Path, placeholders: Sequence[str]) -> None:
    """An empty OCI layout whose blobs/ holds empty files for the blobs we must not fetch."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    for digest in placeholders:
        (blobs / digest.split(":", 1)[1]).touch()


def copy_blobs(image: str, source: str, layout: Path, *, insecure: bool = False,
               authfile: Path | None = None, show_progress: bool = False,
               timeout: float, watch: Callable[[], None] | None = None,
               blob: str | None = None) -> None:
    """Copy the image into ``layout`` (see prepare_layout); blobs land in blobs/sha256/.
    Bounded by ``timeout``; ``watch`` (see _run) may stop it; ``blob`` names what it fetches."""
    argv = ["copy", "--retry-times", RETRIES, *_tls("src-tls-verify", insecure),
            *_auth(authfile, "src-authfile")]
    if not show_progress:
        argv.append("--quiet")
    _run(image, [*argv, source, f"oci:{layout}:pull"], show_progress=show_progress,
         timeout=timeout, watch=watch, blob=blob, authfile=authfile)


def copy_dir(image: str, source: str, dest: Path, *, timeout: float,
             watch: Callable[[], None] | None = None, blob: str | None = None) -> None:
    """Copy a local image (docker-archive:, oci:) byte for byte into the new directory ``dest``:
    blobs land as ``dest/<hex>``. (The oci: destination would gzip plain-tar layers.)"""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _run(image, ["copy", "--quiet", source, f"dir:{dest}"], timeout=timeout, watch=watch,
         blob=blob)
