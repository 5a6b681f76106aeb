"""`hypervm run IMAGE`: images from a real registry, archives and OCI layouts, in real VMs."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration import imagebuild
from tests.integration.imagebuild import make_state_dir
from tests.integration.registry import Registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, imagebuild.BuiltImage]:
    root = tmp_path_factory.mktemp("layouts")
    return {"multi": imagebuild.multilayer(root / "multi"),
            "user": imagebuild.user_image(root / "user")}


@pytest.fixture
def image_env() -> Iterator[dict[str, str]]:
    """A private image cache for the CLI (kernel and initrd stay the host's)."""
    cache = make_state_dir()
    yield {"HYPERVM_IMAGE_DIR": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)


def listing(root: Path) -> list[str]:
    """Every entry of the cache (its skeleton of directories and lock files does not count)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not p.is_dir() and p.parent.name != "locks")


def test_registry_image_runs_with_the_merged_tree(hypervm, registry: Registry, layouts,  # noqa: ANN001
                                                  image_env: dict[str, str]) -> None:
    ref = imagebuild.push(layouts["multi"], registry.host, "multi", "v1")
    result = hypervm("run", "-q", ref, "--", "sh", "-c",
                     "pwd; cat keep.txt new.txt; ls /opq; test -e gone.txt || echo gone-absent;"
                     " test -e /bin/stat || echo stat-whited-out; exit 4", env=image_env)
    assert result.returncode == 4, result.stderr.decode()
    assert result.stdout.decode().split() == ["/data", "keep", "new", "fresh.txt", "gone-absent",
                                              "stat-whited-out"]


def test_image_user_entrypoint_and_env(hypervm, registry: Registry, layouts,  # noqa: ANN001
                                       image_env: dict[str, str]) -> None:
    ref = imagebuild.push(layouts["user"], registry.host, "user", "v1")
    result = hypervm("run", "-q", ref, env=image_env)  # Entrypoint sh -c, Cmd id, User app
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "uid=1000(app) gid=1000(app)" in out and "2000(shared)" in out
    result = hypervm("run", "-q", "-u", "svc", "-w", "/", "-e", "A=2", ref, "--",
                     'echo "$A $(id -u) $PWD"',
                     env=image_env)
    assert result.stdout == b"2 1001 /\n", result.stderr.decode()


def test_second_run_transfers_no_blob_and_concurrent_runs_fetch_once(
        hypervm, registry: Registry, layouts, image_env: dict[str, str]) -> None:  # noqa: ANN001
    ref = imagebuild.push(layouts["multi"], registry.host, "conc", "v1")
    before = registry.blob_gets("conc")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: hypervm("run", "-q", ref, "--", "cat", "keep.txt",
                                                  env=image_env), range(4)))
    assert [r.stdout for r in results] == [b"keep\n"] * 4, [r.stderr for r in results]
    fetched = registry.blob_gets("conc") - before
    assert fetched and all(count == 1 for count in fetched.values()), fetched
    again = hypervm("run", "-q", ref, "--", "true", env=image_env)
    assert again.returncode == 0
    assert registry.blob_gets("conc") - before == fetched, "second run fetched a blob again"


def test_archive_and_oci_sources_run_the_same(hypervm, layouts, tmp_path: Path,  # noqa: ANN001
                                              image_env: dict[str, str]) -> None:
    archive = imagebuild.save_docker_archive(layouts["multi"], tmp_path / "multi.tar",
                                             "multi:v1")
    script = "cat /data/keep.txt /data/new.txt; ls /opq"
    outputs = [hypervm("run", "-q", src, "--", "sh", "-c", script, env=image_env).stdout
               for src in (f"docker-archive:{archive}", layouts["multi"].oci_ref)]
    assert outputs[0] == outputs[1] == b"keep\nnew\nfresh.txt\n"


def test_unknown_image_is_one_clear_line(hypervm, registry: Registry,  # noqa: ANN001
                                         image_env: dict[str, str]) -> None:
    cache = Path(image_env["HYPERVM_IMAGE_DIR"])
    before = listing(cache)
    result = hypervm("run", "-q", f"{registry.host}/nope:missing", "--", "true", env=image_env)
    assert result.returncode != 0
    assert b"nope" in result.stderr and b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1, result.stderr
    assert listing(cache) == before


#: a sitecustomize for the CLI under test: the modules loaded when its domain's createXML begins
#: (a module left for later, executor.libvirt.starter.defer_modules, is not loaded: not listed),
#: its hook set once the run itself imports the hypervisor module (importing it here would
#: import dataclasses and inspect before the console script could leave inspect for later)
MODULES_AT_CREATE_HOOK = """
import os, sys

class _AfterImport:
    name = "executor.libvirt.hypervisor"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_then(hypervisor):
            exec_module(hypervisor)
            _create = hypervisor.Hypervisor.create

            def create(self, domain):
                loaded = [name for name, module in sys.modules.items()
                          if type(module).__name__ != "_Later"]
                with open(os.environ["HYPERVM_TEST_MODULES_AT_CREATE"], "w") as out:
                    out.write("\\n".join(sorted(loaded)))
                return _create(self, domain)

            hypervisor.Hypervisor.create = create

        spec.loader.exec_module = exec_then
        return spec

sys.meta_path.insert(0, _AfterImport())
"""
#: what a cold run of a cached registry image first needs once its domain is created (while
#: the guest boots) or not at all: the guest channel and its waits, the network policy and its
#: thread's Future, the output relay and exit statuses, a pull (manifests, unpacking), a tenant's
#: pull checks, the pool's client, a -v directory's hand-back (ctypes), a configuration file,
#: a -d/-t run's supervisor; socket (a pool's socket, published ports), subprocess (a build, the
#: KVM probe), tempfile (a --rootfs run, a pull, a cache write), shutil (a build, a pull, the end),
#: libvirt's event values (the event thread's first event); typing (annotations only), inspect
#: with ast and dis (dataclasses' for a class without a docstring), traceback with linecache,
#: tokenize and textwrap (logging's text of an exception), ElementPath (an XML's parse, not its
#: build), a read-write volume's hand-back
#: (executor.volume_files), a kernel build's modules; hashlib with OpenSSL's libcrypto (~2.3 ms:
#: the values hashed before createXML are small, hypervm.digest)
AFTER_CREATE = ("executor.guest.channel", "tenacity", "executor.netpolicy", "concurrent.futures",
                "executor.cli.follow", "executor.runner", "vmimage.images.unpack", "tarfile",
                "vmimage.images.pull", "vmimage.images.manifest",
                "vmimage.images.authorize", "vmimage.images.credentials",
                "vmimage.images.skopeo", "vmimage.images.sources", "executor.pool.adopt",
                "ctypes", "tomllib", "uuid", "executor.cli.detach", "executor.supervisor.box",
                "socket", "subprocess", "selectors", "tempfile", "random", "vmimage.rootfs",
                "shutil", "bz2", "lzma", "executor.libvirt.events", "typing", "inspect",
                "ast", "dis", "traceback", "linecache", "tokenize", "textwrap",
                "executor.volume_files", "vmimage.kernel.kconfig", "vmimage.kernel.elfunpad",
                "vmimage.progress", "xml.etree.ElementPath", "hashlib", "_hashlib")


def test_a_cold_run_creates_its_domain_before_importing_what_follows(
        hypervm, image_ref: str, image_env: dict[str, str],  # noqa: ANN001
        tmp_path: Path) -> None:
    """The modules a cold ``hypervm run IMAGE -- true`` has loaded when createXML begins, in a
    real run (a cache hit): each one not needed to create the domain is milliseconds before
    the boot starts (issue 17; tests/unit/test_cli_run.py checks the modules' imports alone,
    this the code the run executes up to createXML too: e.g. the user's resolution)."""
    (tmp_path / "sitecustomize.py").write_text(MODULES_AT_CREATE_HOOK)
    listed = tmp_path / "modules.txt"
    env = {**image_env, "HYPERVM_POOL": "off", "HYPERVM_SNAPSHOT": "off",
           "HYPERVM_TEST_MODULES_AT_CREATE": str(listed)}
    assert hypervm("run", "-q", image_ref, "--", "true", env=env).returncode == 0  # the pull
    paths = [str(tmp_path), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    result = hypervm("run", "-q", image_ref, "--", "true",
                     env={**env, "PYTHONPATH": os.pathsep.join(paths)})
    assert result.returncode == 0, result.stderr.decode()
    loaded = set(listed.read_text().split())
    assert {"executor.vm", "executor.libvirt.domain_xml", "executor.libvirt.starter"} <= loaded
    assert sorted(loaded.intersection(AFTER_CREATE)) == []
    # libvirt's C library is loaded by the starter child (its createXML), not by the CLI
    # before it: `libvirt` is only a lazy module there (executor.libvirt.starter.lazy_module)
    assert sorted(loaded.intersection(("libvirtmod", "libvirtmod_qemu"))) == []
