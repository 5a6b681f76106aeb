"""Every operator setting in one table, and the configuration file that can set them.

A setting has a name (its key in ``/etc/hypervm/config.toml``), its ``HYPERVM_*`` variable and a
default. The file is read with :mod:`tomllib` (its path from ``HYPERVM_CONFIG``); the environment
still overrides it. The file's values are handed to the same parsers as the variables (they become
the variables' values where these are unset), so each setting is parsed in one place; an unknown
key, bad TOML or a bad value is an :class:`~hypervm.errors.InvalidSpec` naming the file and key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from hypervm.config import config_from_env, mesos_policy_from_env
from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

DEFAULT_CONFIG_FILE = "/etc/hypervm/config.toml"
CONFIG_ENV = "HYPERVM_CONFIG"


@frozen_dataclass
class Setting:
    """One host setting: its configuration file key, variable, default and help."""

    #: the key in config.toml
    key: str
    #: the environment variable (it overrides the file)
    env: str
    #: the default as the variable would spell it ("" : unset)
    default: str
    #: what it sets
    help: str
    #: a TOML list is joined with this into the variable's value
    separator: str = ","
    #: a TOML boolean becomes (true, false)
    booleans: tuple[str, str] = ("on", "off")


#: every HYPERVM_* setting an operator may set (not: HYPERVM_CONFIG itself, the test hook
#: HYPERVM_EXECUTOR_RUNTIME, and the scheduler's secret, which belongs in --secret-file)
SETTINGS: tuple[Setting, ...] = (
    Setting("state_dir", "HYPERVM_STATE_DIR", "/var/lib/hypervm",
            "boot artefacts, layer images, the image cache"),
    Setting("run_dir", "HYPERVM_RUN_DIR", "/run/hypervm", "per-VM run directories, pool socket"),
    Setting("libvirt_uri", "HYPERVM_LIBVIRT_URI", "qemu:///system", "the libvirt to talk to"),
    Setting("accel", "HYPERVM_ACCEL", "auto", "auto, kvm or tcg"),
    Setting("kernel", "HYPERVM_KERNEL", "hyperkernel", "hyperkernel or distro"),
    Setting("qemu", "HYPERVM_QEMU", "hyperqemu", "hyperqemu or distro"),
    Setting("init", "HYPERVM_INIT", "", "the guest init binary (default: the tree's build)"),
    Setting("image_dir", "HYPERVM_IMAGE_DIR", "", "the image cache (default: state_dir/images)"),
    Setting("insecure_registries", "HYPERVM_INSECURE_REGISTRIES", "",
            "registries reached over plain HTTP (a list)"),
    Setting("pool", "HYPERVM_POOL", "auto", "auto (take warm VMs when a pool serves) or off",
            booleans=("auto", "off")),
    Setting("pool_socket", "HYPERVM_POOL_SOCKET", "", "the warm pool's socket "
            "(default: run_dir/pool.sock)"),
    Setting("pool_learn_images", "HYPERVM_POOL_LEARN_IMAGES", "4",
            "images the pool daemon keeps image VMs for, the ones run last (0: none)"),
    Setting("snapshot", "HYPERVM_SNAPSHOT", "off", "on (start VMs no pool VM serves from a "
            "snapshot of their shape) or off (boot them cold)"),
    Setting("starter", "HYPERVM_STARTER", "on", "on (a cold foreground run forks a child that "
            "loads and connects libvirt while the run imports, and creates its VM) or off"),
    Setting("snapshot_max_age", "HYPERVM_SNAPSHOT_MAX_AGE", "3600",
            "seconds after which a snapshot's template is remade (0: never)"),
    Setting("snapshot_max_clones", "HYPERVM_SNAPSHOT_MAX_CLONES", "100",
            "clones a snapshot serves before its template is remade (0: no bound)"),
    Setting("snapshot_vcpus", "HYPERVM_SNAPSHOT_VCPUS", "",
            "vCPUs a snapshot's template can hot-plug into its clones, so shapes of up to "
            "this many share it (default: the host's CPUs)"),
    Setting("tcg_tb_cache_mib", "HYPERVM_TCG_TB_CACHE_MIB", "", "TCG translation cache in MiB"),
    Setting("free_page_reporting", "HYPERVM_FREE_PAGE_REPORTING", "on",
            "guests hand freed memory back"),
    Setting("tcg_flush", "HYPERVM_TCG_FLUSH", "on", "drop the boot's translations when READY"),
    Setting("guest_tsc_khz", "HYPERVM_GUEST_TSC_KHZ", "auto",
            "the TSC frequency TCG guests are given, so they do not calibrate it: auto (the "
            "host's, when its kernel states it exactly), off, or kHz"),
    Setting("discard_zero_pages", "HYPERVM_DISCARD_ZERO_PAGES", "on",
            "give back guest RAM pages of zeros (cold VMs: settled flush; pool VMs: warm-up)"),
    Setting("ksm", "HYPERVM_KSM", "off", "the host's KSM may merge identical guest pages",
            booleans=("on", "off")),
    Setting("vm_uid_range", "HYPERVM_VM_UID_RANGE", "200000-265535",
            "uids QEMU processes run as, one per VM"),
    Setting("image_auth_ttl", "HYPERVM_IMAGE_AUTH_TTL", "300",
            "seconds a registry's authorization of a cached image is remembered"),
    Setting("task_host_credentials", "HYPERVM_TASK_HOST_CREDENTIALS", "off",
            "Mesos tasks may pull with the host's Docker credentials"),
    Setting("container_pids", "HYPERVM_CONTAINER_PIDS", "4096", "pids.max per container"),
    Setting("writable_layer_mib", "HYPERVM_WRITABLE_LAYER_MIB", "",
            "a container's writable layer in MiB (default: half the VM's RAM)"),
    Setting("image_max_layer_bytes", "HYPERVM_IMAGE_MAX_LAYER_BYTES", "8G",
            "uncompressed bytes of one layer"),
    Setting("image_max_bytes", "HYPERVM_IMAGE_MAX_BYTES", "16G",
            "uncompressed bytes of one image"),
    Setting("image_max_entries", "HYPERVM_IMAGE_MAX_ENTRIES", "500000", "tar entries per layer"),
    Setting("image_max_layers", "HYPERVM_IMAGE_MAX_LAYERS", "128", "layers per image"),
    Setting("image_min_free_bytes", "HYPERVM_IMAGE_MIN_FREE_BYTES", "1G",
            "free disk the image cache keeps"),
    Setting("image_pull_timeout", "HYPERVM_IMAGE_PULL_TIMEOUT", "1800", "seconds per pull"),
    Setting("image_lock_timeout", "HYPERVM_IMAGE_LOCK_TIMEOUT", "1800",
            "seconds to wait for another pull's lock"),
    Setting("mesos_local_image_sources", "HYPERVM_MESOS_LOCAL_IMAGE_SOURCES", "off",
            "Mesos tasks may name docker-daemon:, docker-archive: and oci: images"),
    Setting("host_path_prefixes", "HYPERVM_HOST_PATH_PREFIXES", "",
            "directories Mesos HOST_PATH volumes may come from (a list)", separator=":"),
    Setting("max_kill_grace", "HYPERVM_MAX_KILL_GRACE", "300",
            "the longest kill grace period a task may ask for (seconds)"),
    Setting("kill_escalation", "HYPERVM_KILL_ESCALATION", "5",
            "seconds after SIGKILL before the VM is destroyed"),
    Setting("executor_ack_timeout", "HYPERVM_EXECUTOR_ACK_TIMEOUT", "",
            "seconds the executor waits for the agent's acknowledgements"),
    Setting("log_max_bytes", "HYPERVM_LOG_MAX_BYTES", "10485760",
            "bytes of a sandbox log before it is rotated"),
    Setting("log_backups", "HYPERVM_LOG_BACKUPS", "5", "rotated sandbox logs kept"),
    Setting("debug", "HYPERVM_DEBUG", "", "the executor logs at debug level",
            booleans=("1", "")),
    Setting("net_policy", "HYPERVM_NET_POLICY", "enforce",
            "enforce (guests never reach the host, link-local or denied ranges) or off",
            booleans=("enforce", "off")),
    Setting("net_deny", "HYPERVM_NET_DENY", "", "more address ranges guests may not reach "
            "(a list of CIDRs)"),
    Setting("net_allow_host", "HYPERVM_NET_ALLOW_HOST", "",
            "host services guests may use (a list of ADDRESS:PORT[/udp])"),
)

BY_KEY = {s.key: s for s in SETTINGS}


def config_path(env: Mapping[str, str]) -> Path:
    return Path(env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings as variable values (``{"HYPERVM_STATE_DIR": "/srv/hypervm"}``); a
    missing file is an empty configuration."""
    try:
        with path.open("rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InvalidSpec(str(path), f"cannot be read: {e.strerror}") from e
    # optional: only a host with a configuration file parses one (~3 ms of every command's
    # start without it, a cold hypervm run's included)
    import tomllib

    try:
        table = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidSpec(str(path), f"is not valid TOML: {e}") from e
    values = {}
    for key, value in table.items():
        setting = BY_KEY.get(key)
        if setting is None:
            raise InvalidSpec(f"{path}: {key}", "is not a hypervm setting",
                              hint="hypervm doctor lists the settings")
        values[setting.env] = _as_text(path, setting, value)
    return values


def _as_text(path: Path, setting: Setting, value: object) -> str:
    if isinstance(value, bool):
        return setting.booleans[0] if value else setting.booleans[1]
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return setting.separator.join(value)
    raise InvalidSpec(f"{path}: {setting.key}", f"{value!r} is not a string, number, "
                      "boolean or list of strings", hint=f"e.g. {setting.key} = "
                      f"\"{setting.default or '...'}\"")


def apply_config_file(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Give each variable unset in ``environ`` (os.environ by default) its value from the
    configuration file; returns the file's values. Variables already set win."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    values = read_config_file(path)
    for name, value in values.items():
        if environ.get(name, "") == "":
            environ[name] = value
    return values


def check_file_values(path: Path, file_values: Mapping[str, str], error: InvalidSpec) -> None:
    """Re-raise ``error`` (a variable's parser refusing a value) naming the file and key when
    the value came from the file."""
    for s in SETTINGS:
        if error.field == s.env and s.env in file_values:
            message = str(error).split(": ", 1)[-1]
            raise InvalidSpec(f"{path}: {s.key}", message) from error


def load_config_file(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """:func:`apply_config_file`, then the host settings parsed once, so that a bad value from
    the file is refused naming the file and key (and one from a variable naming the variable)."""
    environ = os.environ if environ is None else environ
    values = apply_config_file(environ)
    try:
        config_from_env(environ)
        mesos_policy_from_env(environ)
    except InvalidSpec as e:
        check_file_values(config_path(environ), values, e)
        raise
    return values
