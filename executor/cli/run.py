"""``hypervm run``: run one command in a fresh HyperVM and exit with its status."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType

from executor import volume_access
from executor.cli import run_inputs
from executor.launcher import Launcher, boot_vm
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import InvalidSpec
from hypervm.limits import default_limits
from hypervm.netspec import NetworkSpec, parse_publish
from hypervm.podspec import Container, Limits, Mount, PodSpec, Process, Resources, Rootfs

log = logging.getLogger(__name__)

#: SIGTERM→SIGKILL grace period of a stopped run (``--grace``), as Mesos' default kill policy
DEFAULT_GRACE_SECONDS = 3.0
#: what a foreground run needs once its VM is booted, imported while the guest boots
FOLLOW_MODULE = "executor.cli.follow"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run a command in a new HyperVM",
        usage="hypervm run [options] IMAGE [-- CMD [ARGS...]]\n"
              "       hypervm run [options] --rootfs DIR -- CMD [ARGS...]",
        description="Boot a HyperVM, run CMD (default: the image's Entrypoint/Cmd) in it with "
                    "stdout/stderr streamed to ours, and exit with its status (128+N when killed "
                    "by signal N, 127 when the command is not found, 126 when not executable). "
                    "IMAGE is a registry reference (host:port/name:tag, name@sha256:...), "
                    "docker-daemon:NAME:TAG, docker-archive:FILE or oci:DIR[:TAG].")
    p.add_argument("--rootfs", type=Path, help="run from this root filesystem directory instead "
                                               "of an image")
    p.add_argument("--cpus", default="1", metavar="N",
                   help="CPUs (default 1); a fraction such as 1.5 gives 2 vCPUs limited to 1.5 "
                        "cores of CPU time")
    p.add_argument("--memory", default="256", metavar="SIZE",
                   help="guest memory: 512 (MiB), 512m or 1g (default 256 MiB)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set an environment variable; KEY alone takes its value from ours "
                        "(repeatable)")
    p.add_argument("--env-file", action="append", default=[], type=Path, metavar="FILE",
                   help="read KEY=VALUE (or KEY) lines from FILE (repeatable)")
    p.add_argument("-v", "--volume", action="append", default=[],
                   metavar="HOST:CONTAINER[:ro]",
                   help="share the host directory HOST at CONTAINER, read-only with :ro "
                        "(repeatable; as docker: verbose logging is hypervm --verbose)")
    p.add_argument("-w", "--workdir", default=None, metavar="DIR", help="working directory")
    p.add_argument("-u", "--user", default=None, metavar="USER[:GROUP]",
                   help="user to run as (names need an image; --rootfs takes UID[:GID])")
    p.add_argument("--entrypoint", default=None, help="override the image's Entrypoint")
    p.add_argument("-i", "--interactive", action="store_true", help="forward our stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress on stderr")
    p.add_argument("--pull", choices=("missing", "always", "never"), default="missing",
                   help="missing (default): use a registry image already in the cache as is; "
                        "always: look the tag up again; never: only the cache")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="allow plain HTTP to this registry (loopback registries always are)")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:]HOST:CONTAINER[/udp]",
                   help="publish a VM port on the host (repeatable; default IP 0.0.0.0)")
    p.add_argument("--tenant", default="default",
                   help="tenant of the VM (recorded; VMs never reach each other, see "
                        "README Networking)")
    p.add_argument("--network", choices=("user", "none"), default="user",
                   help="user: a NIC on a private network, the outside world reachable, "
                        "the host only where HYPERVM_NET_ALLOW_HOST says (default); none: "
                        "loopback only")
    p.add_argument("--name", default=None,
                   help="pod name, unique among containers (default run; -d, -t: generated)")
    add_run_options(p)
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_SECONDS, metavar="SECONDS",
                   help="SIGTERM→SIGKILL grace period when stopped (default 3)")
    p.add_argument("--boot-timeout", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("image", nargs="?", metavar="IMAGE", help=argparse.SUPPRESS)
    p.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_command)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``run`` gets for detached and terminal runs (executor.cli.detach)."""
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background: print the container's name and exit (the VM "
                        "is kept by a supervisor; see ps, logs, exec, attach, stop, rm)")
    p.add_argument("-t", "--tty", action="store_true",
                   help="give the process a terminal in the guest (with -i: an interactive "
                        "shell; Ctrl-P Ctrl-Q detaches, hypervm attach re-attaches)")
    p.add_argument("--rm", action="store_true",
                   help="remove the container once it exits (detached or -t runs; a "
                        "foreground run keeps nothing anyway)")


def resolve_name(args: argparse.Namespace) -> None:
    """A supervised run (-d or -t) without --name gets a generated one; foreground: "run"."""
    if args.name is None and supervised(args):
        # optional: only a -d/-t run names a supervisor's box (executor.cli.detach, which a
        # foreground run does not import before createXML: issue 17)
        from executor.supervisor.box import default_name

        args.name = default_name()
    elif args.name is None:
        args.name = "run"


def supervised(args: argparse.Namespace) -> bool:
    return bool(args.detach or args.tty)


def parse_user(spec: str | None) -> tuple[int, int]:
    if spec is None:
        return 0, 0
    uid_s, _, gid_s = spec.partition(":")
    try:
        uid = int(uid_s)
        gid = int(gid_s) if gid_s else uid
    except ValueError as e:
        raise InvalidSpec("--user", f"{spec!r} is not UID[:GID]",
                          hint="use numeric ids, e.g. -u 1000:1000") from e
    if uid < 0 or gid < 0:
        raise InvalidSpec("--user", f"{spec!r} has a negative id")
    return uid, gid


def command_from(argv: list[str]) -> tuple[str, ...]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InvalidSpec("command", "no command given", hint="hypervm run ... -- CMD [ARGS...]")
    return tuple(argv)


def check_env(args: argparse.Namespace) -> tuple[str, ...]:
    """``--env-file`` then ``-e`` items, ``-e KEY`` filled from our environment."""
    return run_inputs.environment(args.env, args.env_file, os.environ)


def process_from_args(args: argparse.Namespace, command: tuple[str, ...]) -> Process:
    uid, gid = parse_user(args.user)
    return Process(args=command, env=check_env(args), cwd=args.workdir or "/",
                   uid=uid, gid=gid, stdin=args.interactive, tty=args.tty)


@contextmanager
def rootfs_image(cfg: HostConfig, rootfs: Path | None) -> Iterator[Path]:
    """A read-only erofs image of ``rootfs`` for this run, removed afterwards."""
    if rootfs is None:
        raise InvalidSpec("--rootfs", "no root filesystem given",
                          hint="pass --rootfs DIR with a container root filesystem")
    if not rootfs.is_dir():
        raise InvalidSpec("--rootfs", f"{rootfs} is not a directory",
                          hint="pass an existing directory holding the container's files")

    cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.rootfs_dir, 0o755)
    # deferred: --rootfs only; a cold image run imports neither before createXML (tempfile,
    # random, subprocess: ~2 ms, issue 17)
    import tempfile  # see above

    from vmimage.rootfs import build_layer_image  # see above

    fd, name = tempfile.mkstemp(prefix="run-", suffix=".erofs", dir=cfg.rootfs_dir)
    os.close(fd)
    image = Path(name)
    try:
        build_layer_image(rootfs, image)
        yield image
    finally:
        image.unlink(missing_ok=True)


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the run loop polls (the VM is torn down there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()


def run_pod(cfg: HostConfig, pod: PodSpec, *, grace: float = DEFAULT_GRACE_SECONDS,
            boot_timeout: float = 60.0, on_booted: Callable[[], object] | None = None) -> int:
    """Boot ``pod``, stream its first container's output to ours, return its exit code."""
    container = pod.containers[0]
    with StopRequest() as stop, volume_access.VolumeHold(cfg, container.mounts) as hold, \
            boot_vm(cfg, pod, timeout=boot_timeout, before_shares=hold.before_shares,
                    booting=lambda: importlib.import_module(FOLLOW_MODULE)) as vm:
        if on_booted is not None:
            on_booted()
        if stop.event.is_set():
            return 128 + (stop.signum or signal.SIGTERM)
        # imported by boot_vm's booting while the guest booted: not before createXML, and
        # not on the clock after READY either (the output relay, exit statuses: issue 17)
        from executor.cli import follow

        running = follow.relay(vm, container, stop, grace)
        if isinstance(running, int):
            return running
    return follow.exit_status(container, running, stop.signum)


def image_command(args: argparse.Namespace) -> tuple[tuple[str, ...] | None,
                                                     tuple[str, ...] | None]:
    """(command, entrypoint) of an image run's arguments: None where the image's own holds."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return tuple(argv) or None, None if args.entrypoint is None else tuple(args.entrypoint.split())


def single_pod(name: str, layers: tuple[Path, ...], process: Process,
               resources: Resources, net: NetworkSpec | None = None,
               limits: Limits | None = None, mounts: tuple[Mount, ...] = (),
               image: str | None = None) -> PodSpec:
    pod = PodSpec(name=name, containers=(Container(name=name, rootfs=Rootfs(layers=layers),
                                                   process=process, limits=limits or Limits(),
                                                   mounts=mounts),),
                  resources=resources, network=net or NetworkSpec(), image=image)
    pod.validate()
    return pod


def network_from_args(args: argparse.Namespace) -> NetworkSpec:
    net = NetworkSpec(mode=args.network, tenant=args.tenant,
                      ports=tuple(parse_publish(p) for p in args.publish))
    net.validate()
    return net


def run_or_detach(cfg: HostConfig, pod: PodSpec, args: argparse.Namespace,
                  on_booted: Callable[[], object] | None = None) -> int:
    """-d and -t runs go to a supervisor (executor.cli.detach), others run here."""
    if supervised(args):
        # optional: only -d/-t runs go to a supervisor (its box, pickle, the session client)
        from executor.cli import detach

        return detach.start(cfg, pod, args, args.image if args.rootfs is None else None,
                            on_booted=on_booted)
    return run_pod(cfg, pod, grace=args.grace, boot_timeout=args.boot_timeout,
                   on_booted=on_booted)


def run_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    resolve_name(args)
    resources = run_inputs.resources(args.cpus, args.memory)
    net = network_from_args(args)
    mounts = run_inputs.volumes(args.volume)
    if args.rootfs is not None:
        if args.entrypoint is not None:
            raise InvalidSpec("--entrypoint", "only applies to images, not --rootfs")
        command = command_from(([args.image] if args.image else []) + args.argv)
        process = process_from_args(args, command)
        process.validate("process")
        with rootfs_image(cfg, args.rootfs) as image:
            pod = single_pod(args.name, (image,), process, resources, net, default_limits(cfg),
                             mounts)
            return run_or_detach(cfg, pod, args)
    if args.image is None:
        raise InvalidSpec("IMAGE", "no image and no --rootfs given",
                          hint="hypervm run IMAGE [-- CMD...] or hypervm run --rootfs DIR -- CMD")
    return run_image(cfg, args, resources, net, mounts)


def run_image(cfg: HostConfig, args: argparse.Namespace, resources: Resources,
              net: NetworkSpec | None = None, mounts: tuple[Mount, ...] = ()) -> int:
    launcher = Launcher(cfg, insecure_registries=args.insecure_registry,
                        progress=None if args.quiet else _progress_line)
    command, entrypoint = image_command(args)
    with ExitStack() as hold:
        # keep `hypervm gc` from removing our layers until the running VM protects them
        hold.enter_context(launcher.hold())
        image = run_inputs.resolve_image(launcher, args.image, args.pull)
        process = launcher.process(
            image, command=command, entrypoint=entrypoint, env=check_env(args),
            cwd=args.workdir, user=args.user, stdin=args.interactive)
        if args.tty:
            process = replace(process, tty=True)
        process.validate("process")
        pod = single_pod(args.name, image.layers, process, resources, net, default_limits(cfg),
                         mounts, image=image.ref)
        return run_or_detach(cfg, pod, args, on_booted=hold.close)


def _progress_line(message: str) -> None:
    print(f"hypervm: {message}", file=sys.stderr, flush=True)
