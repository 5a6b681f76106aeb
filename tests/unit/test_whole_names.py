"""Every name validator matches the whole value (DEVELOPERS.md, threat model: "Names are matched
whole"). ``re.match`` with a pattern ending in ``$`` (and jsonschema's ``pattern``, a
``re.search``) accepts ONE trailing newline, which could become a second line of a file the
guest or the host reads (/etc/hosts, env files, libvirt XML, paths, log lines, Mesos fields).
Each group: the plain value passes, the same value with a trailing "\\n" is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from executor.cli.run_inputs import env_items, parse_memory
from executor.libvirt.domain import DiskSpec, DomainSpec, ShareSpec
from executor.libvirt.domain_xml import domain_xml
from executor.mesos.driver_values import parse_duration, settings_from_env
from executor.mesos.exec_socket import socket_path
from executor.mesos.taskinfo import parse_task
from executor.pool.protocol import PoolConfig
from executor.pool.release import parse_release, release_request
from executor.snapshot.standby import lease_reply, parse_lease, parse_standby, standby_request
from executor.snapshot.store import Shape
from hypervm.config import config_from_env
from hypervm.errors import ImageError, InvalidSpec, PoolError
from hypervm.imageref import parse_registry_ref
from hypervm.podspec import Container, PodSpec, Process, Rootfs
from scheduler.marathon import parse_app
from scheduler.pods import parse_pod
from scheduler.tenants import parse_tenants
from scheduler.validation import check_env, check_image, whole_patterns
from vmimage.images.config import parse_config, parse_passwd
from vmimage.images.manifest import OCI_MANIFEST, parse_manifest

# --- hypervm.podspec: pod and container names ---------------------------------------------

def _pod(name: str = "p", container: str = "c1") -> PodSpec:
    return PodSpec(name=name, containers=(Container(
        name=container, rootfs=Rootfs(layers=(Path("/l.erofs"),)), process=Process(args=("sh",))),))


@pytest.mark.parametrize(("field", "names"), [("name", {"name": "web"}),
                                               ("containers[c1\n].name", {"container": "c1"})])
def test_pod_and_container_names_are_matched_whole(field: str, names: dict[str, str]) -> None:
    _pod(**names).validate()
    with pytest.raises(InvalidSpec) as err:
        _pod(**{k: v + "\n" for k, v in names.items()}).validate()
    assert err.value.field == field


# --- hypervm.imageref: repository components, tags, digests, registry hosts ----------------

@pytest.mark.parametrize("ref", [
    "busybox",                                     # a repository component
    "busybox:1.36",                                # a tag
    "busybox@sha256:" + "a" * 64,                  # a digest
    "registry.local:5000/team/app",                # a component after a registry host
])
def test_image_reference_parts_are_matched_whole(ref: str) -> None:
    parse_registry_ref(ref)
    with pytest.raises(ImageError):
        parse_registry_ref(ref + "\n")


def test_a_registry_host_is_matched_whole() -> None:
    assert parse_registry_ref("registry.local:5000/app").domain == "registry.local:5000"
    with pytest.raises(ImageError, match="not a valid registry host"):
        parse_registry_ref("registry.local\n/app")


# --- executor.libvirt.domain: the domain's name, disk serials, 9p tags, QEMU env names -------

def _domain(**overrides: object) -> DomainSpec:
    values: dict[str, object] = dict(
        name="hypervm-pod-1", accel="tcg", vcpus=1, memory_mib=256,
        kernel=Path("/k/vmlinux"), initrd=Path("/i/initrd.img"), cmdline="console=ttyS0",
        channel_socket=Path("/run/hypervm/vms/v/channel.sock"),
        console_log=Path("/run/hypervm/vms/v/console.log"),
        disks=(DiskSpec(Path("/l0.erofs"), "l0"),), shares=(ShareSpec(Path("/srv/s"), "s0"),),
        qemu_env={"G_SLICE": "always-malloc"})
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "bad"), [
    ("name", {"name": "hypervm-pod-1\n"}),                                  # <name>
    ("disks[0].serial", {"disks": (DiskSpec(Path("/l0.erofs"), "l0\n"),)}),  # <serial>
    ("shares[0].tag", {"shares": (ShareSpec(Path("/srv/s"), "s0\n"),)}),    # <target dir=…>
    ("qemu_env['G_SLICE\\n']", {"qemu_env": {"G_SLICE\n": "always-malloc"}}),  # <qemu:env>
])
def test_no_trailing_newline_reaches_the_domain_xml(field: str, bad: dict[str, object]) -> None:
    """On the old code each of these went into the XML libvirt defines the domain from
    (``<name>hypervm-pod-1\\n</name>`` …); now the spec is refused, naming the field."""
    assert "<name>hypervm-pod-1</name>" in domain_xml(_domain())
    with pytest.raises(InvalidSpec) as err:
        domain_xml(_domain(**bad))
    assert err.value.field == field


# --- executor.mesos: Mesos IDs, the agent's UPID and endpoint, the exec socket's task id -----

def _task(tid: str) -> dict[str, Any]:
    return {"task_id": {"value": tid}, "agent_id": {"value": "a"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 128}}],
            "container": {"type": "MESOS", "mesos": {"image": {
                "type": "DOCKER", "docker": {"name": "alpine:3"}}}},
            "command": {"value": "echo hi"}}


@pytest.mark.parametrize("bad", ["t1\n", "t1\nforged log line", "t1\r", "t\\1", ".", ".."])
def test_a_mesos_id_is_checked_as_mesos_checks_it(bad: str) -> None:
    """Mesos' validateID refuses control characters, '/' and '\\\\', '.' and '..'; the old
    pattern (``^[^/\\x00]{1,255}$``) let a newline through anywhere: a task id ends up in the
    executor's log lines (driver_values.describe) and in the VM's metadata."""
    assert parse_task(_task("t1"), "task").task_id == "t1"
    with pytest.raises(InvalidSpec) as err:
        parse_task(_task(bad), "task")
    assert err.value.field == "task.task_id.value"


def _env(**extra: str) -> dict[str, str]:
    return {"MESOS_FRAMEWORK_ID": "f-0001", "MESOS_EXECUTOR_ID": "e",
            "MESOS_AGENT_ENDPOINT": "127.0.0.1:5051", "MESOS_SANDBOX": "/tmp/s", **extra}


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("MESOS_FRAMEWORK_ID", "f-0001", "f-0001\n"),
    ("MESOS_EXECUTOR_ID", "e", "e\n"),
    ("MESOS_AGENT_ENDPOINT", "127.0.0.1:5051", "127.0.0.1:5051\n"),
    ("MESOS_AGENT_ENDPOINT", "127.0.0.1:5051", "127.0.0.1:\u0665\u0660\u0665\u0661"),  # ٥٠٥١
    ("MESOS_SLAVE_PID", "slave(1)@127.0.0.1:5051", "slave(1)@127.0.0.1:5051\n"),
    ("MESOS_SLAVE_PID", "slave(1)@127.0.0.1:5051", "slave(1)@127.0.0.1:\u0665\u0660\u0665\u0661"),
])
def test_the_agents_environment_is_matched_whole(name: str, good: str, bad: str) -> None:
    """On the old code the endpoint "127.0.0.1:5051\\n" became the address the executor
    connects to, and Arabic-Indic digits (``\\d``) passed as a port."""
    settings_from_env(_env(**{name: good}))
    with pytest.raises(InvalidSpec) as err:
        settings_from_env(_env(**{name: bad}))
    assert err.value.field == name


def test_a_duration_is_of_ascii_digits() -> None:
    assert parse_duration(" 5secs\n", "d") == 5.0  # surrounding blanks, as before
    with pytest.raises(InvalidSpec):
        parse_duration("\u0665secs", "d")


def test_a_task_id_with_a_newline_names_no_socket_file(tmp_path: Path) -> None:
    """The old code named the socket of task "t1\\n" ``…/tasks/t1\\n.sock``; now it is hashed
    as any other unsafe id."""
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                           "HYPERVM_RUN_DIR": str(tmp_path / "run")})
    assert socket_path(cfg, "t1").name == "t1.sock"
    path = socket_path(cfg, "t1\n")
    assert "\n" not in str(path) and path.name.startswith("sha256-")


# --- executor.snapshot / executor.pool: standby keys and templates, released VMs, pool names -

_KEY, _VM = "0123456789abcdef01234567", "hypervm-tmpl-1"


@pytest.mark.parametrize("field", ["key", "template"])
def test_a_standby_request_is_matched_whole(field: str) -> None:
    """The pool daemon (root) reads these from a client's socket."""
    values = {"key": _KEY, "template": _VM}
    parse_standby(standby_request(Shape(1, 128), **values))
    values[field] += "\n"
    with pytest.raises(PoolError, match=f"standby.{field}"):
        parse_standby(standby_request(Shape(1, 128), **values))


def test_a_standby_lease_names_a_whole_vm() -> None:
    parse_lease(lease_reply(_VM, "/run/v", None, {}))
    with pytest.raises(PoolError, match="malformed standby reply"):
        parse_lease(lease_reply(_VM + "\n", "/run/v", None, {}))


def test_a_release_names_a_whole_vm() -> None:
    """The pool daemon (root) reads it from a client's socket."""
    assert parse_release(release_request(_VM)) == _VM
    with pytest.raises(PoolError, match="release.vm"):
        parse_release(release_request(_VM + "\n"))


def test_a_pool_name_is_matched_whole() -> None:
    PoolConfig(name="web").validate()
    with pytest.raises(InvalidSpec) as err:
        PoolConfig(name="web\n").validate()
    assert err.value.field == "pool.name"


# --- executor.cli.run_inputs: ``-e`` keys and ``--memory`` --------------------------------

def test_an_env_key_with_a_newline_reaches_no_container() -> None:
    """On the old code ``-e "GREETING\\n=hi"`` went into the container's environment as it was
    (and ``-e "HOME\\n"`` looked up a variable of that name)."""
    assert env_items(["GREETING=hi", "HOME"], {"HOME": "/root"}) == ["GREETING=hi", "HOME=/root"]
    for item in ("GREETING\n=hi", "HOME\n"):
        with pytest.raises(InvalidSpec) as err:
            env_items([item], {"HOME\n": "/root"})
        assert err.value.field == "--env"


def test_a_memory_size_is_of_ascii_digits() -> None:
    assert parse_memory(" 512m\n") == 512  # surrounding blanks, as before
    with pytest.raises(InvalidSpec):
        parse_memory("\u0665\u0661\u0662m")  # ٥١٢: float() reads it


# --- vmimage.images: a (hostile) image's digests and /etc/passwd ids ----------------------

_D1, _D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _manifest(layer: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": _D1, "size": 10},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": layer, "size": 20}]}).encode()


def test_a_layer_digest_with_a_newline_names_no_blob_file() -> None:
    """On the old code a registry's "sha256:…\\n" passed, and the pull read the blob from
    ``blob_dir / desc.hex``, a host path ending in a newline."""
    assert parse_manifest("img", _D1, _manifest(_D2)).layers[0].hex == "2" * 64
    with pytest.raises(ImageError, match="no sha256 digest"):
        parse_manifest("img", _D1, _manifest(_D2 + "\n"))


def test_a_diff_id_with_a_newline_names_no_layer_file() -> None:
    """A diff id names the layer's file in the host's cache (cache.layer_path)."""
    def config(diff_id: str) -> bytes:
        return json.dumps({"config": {}, "rootfs": {"diff_ids": [diff_id]}}).encode()

    assert parse_config("img", _D1, config(_D2)).diff_ids == (_D2,)
    with pytest.raises(ImageError, match="bad diff id"):
        parse_config("img", _D1, config(_D2 + "\n"))


def test_a_passwd_id_of_non_ascii_digits_is_skipped_not_a_crash() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises ValueError: the old code let an
    image's /etc/passwd crash the lookup outside the error root."""
    text = "root:x:0:0::/root:/bin/sh\nodd:x:\u00b2:0::/:/bin/sh\nfar:x:\u0665:0::/:/bin/sh\n"
    assert [e.name for e in parse_passwd(text)] == ["root"]


# --- scheduler: tenants, env names, image names, the API's schemas -------------------------

def _tenant(**over: str) -> dict[str, Any]:
    return {"tenants": [{"id": "team-a", "role": "team_a", "token_sha256": "a" * 64,
                         "quota": {"cpus": 1, "mem": 256, "instances": 2}, **over}]}


@pytest.mark.parametrize(("field", "value"), [("id", "team-a"), ("role", "team_a"),
                                              ("token_sha256", "a" * 64)])
def test_a_tenants_fields_are_matched_whole(field: str, value: str) -> None:
    """A YAML block scalar (``id: |``) ends in a newline: refused, naming the field."""
    parse_tenants(_tenant(**{field: value}))
    with pytest.raises(InvalidSpec) as err:
        parse_tenants(_tenant(**{field: value + "\n"}))
    assert err.value.field == f"tenants[0].{field}"


def test_env_and_image_names_are_matched_whole() -> None:
    """On the old code check_image returned "busybox:1.36\\n" as the workload's image."""
    assert check_env({"GREETING": "hi"}, "env") == (("GREETING", "hi"),)
    with pytest.raises(InvalidSpec) as err:
        check_env({"GREETING\n": "hi"}, "env")
    assert err.value.field == "env.GREETING\n"
    assert check_image("busybox:1.36", "image") == "busybox:1.36"
    with pytest.raises(InvalidSpec):
        check_image("busybox:1.36\n", "image")


def _pod_body(pod_id: str = "web", name: str = "a", port: str = "http") -> dict[str, Any]:
    return {"id": pod_id, "containers": [{
        "name": name, "image": "busybox:1.36", "resources": {"cpus": 0.5, "mem": 64},
        "ports": [{"name": port, "containerPort": 80}]}]}


@pytest.mark.parametrize(("field", "names"), [("id", {"pod_id": "web"}),
                                               ("containers[0].name", {"name": "a"}),
                                               ("containers[0].ports[0].name", {"port": "http"})])
def test_a_pods_names_are_matched_whole(field: str, names: dict[str, str]) -> None:
    """jsonschema's ``pattern`` is a ``re.search``: on the old code ``^…$`` let a pod
    "web\\n" through (its WorkloadSpec's id, the tasks' names), a container "a\\n" or a port
    "http\\n" (a Mesos DiscoveryInfo port's name)."""
    assert parse_pod(_pod_body(**names)).id == "web"
    with pytest.raises(InvalidSpec) as err:
        parse_pod(_pod_body(**{k: v + "\n" for k, v in names.items()}))
    assert err.value.field == field


def test_a_marathon_apps_port_name_is_matched_whole() -> None:
    """Marathon's own schema says ``^[a-z][a-z0-9-]*$``, which ECMA-262 reads as the whole
    value; the old code (Python's ``$``) kept the port name "http\\n"."""
    def app(port: str) -> dict[str, Any]:
        return {"id": "/shop/web", "cmd": "httpd", "cpus": 0.25, "mem": 64, "instances": 1,
                "container": {"type": "DOCKER", "docker": {"image": "busybox:1.36"}},
                "portDefinitions": [{"port": 0, "name": port}]}

    assert parse_app(app("http")).containers[0].ports[0].name == "http"
    with pytest.raises(InvalidSpec) as err:
        parse_app(app("http\n"))
    assert err.value.field == "portDefinitions[0].name"


@pytest.mark.parametrize(("pattern", "value", "matches"), [
    ("^[a-z]+$", "web", True), ("^[a-z]+$", "web\n", False),
    ("^a($|/)", "a", True), ("^a($|/)", "a\n", False), ("^a($|/)", "a/b", True),
    ("^[$]$", "$", True), (r"^\$$", "$", True), (r"^\$$", "$\n", False), ("^/", "/x\n", True),
])
def test_a_schema_pattern_reads_dollar_as_json_schema_does(pattern: str, value: str,
                                                           matches: bool) -> None:
    validator = whole_patterns(jsonschema.Draft4Validator)({"pattern": pattern})
    assert validator.is_valid(value) is matches
