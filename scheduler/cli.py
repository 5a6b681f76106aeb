"""``hypervm-scheduler``: the sample multi-tenant CaaS framework.

    hypervm-scheduler --master http://mesos:5050 --listen 0.0.0.0:8080 \\
        --state sqlite:///var/lib/hypervm-scheduler/state.db --tenants /etc/hypervm/tenants.yaml
    hypervm-scheduler hash-token TOKEN      # the token_sha256 of a tenant

The secret for ``--principal`` comes from ``--secret-file`` or ``HYPERVM_SCHEDULER_SECRET``
(never the command line, where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypervm.errors import HyperVMError
from scheduler import ha as ha_group
from scheduler import server as api_server
from scheduler.api import make_app, serve
from scheduler.errors import ConfigError
from scheduler.framework import FRAMEWORK_ID_KEY
from scheduler.leader_proxy import LeaderGate
from scheduler.marathon_api.hub import MarathonHub
from scheduler.marathon_api.resources import ServerInfo
from scheduler.store import open_store
from scheduler.taskgroup import ExecutorConfig
from scheduler.tenants import Tenants, hash_token, load_tenants

log = logging.getLogger("hypervm-scheduler")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypervm-scheduler", description=__doc__.split("\n")[1])
    p.add_argument("--master", required=True, help="http://HOST:PORT, HOST:PORT or zk://…")
    p.add_argument("--listen", required=True,
                   help="HOST:PORT or unix:/PATH of the REST API (plain HTTP: TLS is a proxy's)")
    p.add_argument("--api-threads", type=int, default=8,
                   help="requests handled at once (default 8)")
    p.add_argument("--api-connection-limit", type=int, default=100,
                   help="connections open at once (default 100)")
    p.add_argument("--api-channel-timeout", type=int, default=30,
                   help="seconds an idle or silent connection stays open (default 30)")
    p.add_argument("--trusted-proxy", metavar="ADDRESS",
                   help="the TLS proxy in front: its X-Forwarded-* headers are believed")
    p.add_argument("--state", help="sqlite:///ABSOLUTE/PATH.db (not with --zk)")
    p.add_argument("--zk", help="zk://HOST:PORT,…/PATH: high availability, the leader is "
                   "elected and the state kept in ZooKeeper")
    p.add_argument("--zk-session-timeout", type=float, default=10.0,
                   help="seconds until a dead leader's standby takes over (default 10)")
    p.add_argument("--advertise", help="HOST:PORT the other schedulers reach this API at "
                   "(with --zk; default: --listen)")
    p.add_argument("--tenants", required=True, type=Path, help="tenants file (YAML or JSON)")
    p.add_argument("--name", default="hypervm-scheduler")
    p.add_argument("--user", default="root", help="FrameworkInfo.user (runs the executors)")
    p.add_argument("--principal")
    p.add_argument("--secret-file", type=Path)
    p.add_argument("--failover-timeout", type=float, default=7 * 86400.0,
                   help="seconds Mesos keeps our tasks while we are away (default: a week)")
    p.add_argument("--executor-command", default="hypervm-executor",
                   help="ExecutorInfo.command.value")
    p.add_argument("--executor-cpus", type=float, default=0.1)
    p.add_argument("--executor-mem", type=float, default=64.0)
    p.add_argument("--executor-disk", type=float, default=32.0,
                   help="MiB of disk for the executor (the Mesos master requires some)")
    p.add_argument("--executor-prefix", default="hypervm",
                   help="executor ids (and VM names) start with it")
    p.add_argument("--refuse-seconds", type=float, default=5.0,
                   help="filters.refuse_seconds of declines")
    p.add_argument("--max-event-streams", type=int, default=4,
                   help="open /v2/events streams (each holds one of the --api-threads; "
                        "default 4, at most 2 per tenant)")
    p.add_argument("--debug", action="store_true")
    return p


def master_address(url: str) -> str:
    """pymesos wants HOST:PORT or zk://…"""
    if url.startswith(("zk://", "zoo://")):
        return url
    address = url.removeprefix("http://").removeprefix("https://").rstrip("/")
    if not address or "/" in address:
        raise ConfigError(f"--master {url!r}: give http://HOST:PORT or zk://HOSTS/PATH")
    return address


def listen_address(text: str) -> tuple[str, int]:
    """HOST, PORT of ``--listen`` (``unix:/PATH``, 0 for a unix socket)."""
    address = api_server.parse_listen(text)
    return (address["host"], address["port"]) if "host" in address else (text, 0)


def read_secret(args: argparse.Namespace) -> str | None:
    if args.secret_file is not None:
        try:
            return args.secret_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--secret-file: {e}") from e
    return os.environ.get("HYPERVM_SCHEDULER_SECRET")


def framework_info(args: argparse.Namespace, tenants: Tenants, framework_id: str | None
                   ) -> dict[str, Any]:
    info: dict[str, Any] = {
        "user": args.user, "name": args.name, "roles": tenants.roles,
        "capabilities": [{"type": "MULTI_ROLE"}, {"type": "TASK_KILLING_STATE"}],
        "failover_timeout": args.failover_timeout, "checkpoint": True}
    if args.principal:
        info["principal"] = args.principal
    if framework_id:
        info["id"] = {"value": framework_id}
    return info


def run(args: argparse.Namespace) -> int:
    # optional dependency: pymesos is installed by make deps, not by pip (DEVELOPERS.md)
    from pymesos import MesosSchedulerDriver

    tenants = load_tenants(args.tenants)
    host, port = listen_address(args.listen)
    master = master_address(args.master)
    if not 0 <= args.max_event_streams < args.api_threads:
        raise ConfigError(f"--max-event-streams {args.max_event_streams}: give 0 to "
                          f"{args.api_threads - 1} (each open stream holds one of the "
                          f"--api-threads {args.api_threads})")
    options = api_server.ServerOptions(
        threads=args.api_threads, connection_limit=args.api_connection_limit,
        channel_timeout=args.api_channel_timeout, trusted_proxy=args.trusted_proxy)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    group, gate, server = None, None, None
    if args.zk:  # the API answers at once: a standby forwards to the leader
        group, gate, server = _standby(args, tenants, host, port, options)
        if not group.join(stop):
            return _stop_standby(group, server)
    store = group.store() if group else open_store(_state_url(args))
    cfg = ExecutorConfig(args.executor_command, args.executor_cpus, args.executor_mem,
                         args.executor_prefix, args.executor_disk)
    hub = MarathonHub(store, tenants, ServerInfo(
        args.name, group.leadership.advertise if group else args.listen, args.master,
        args.failover_timeout, args.executor_command, args.user),
        max_streams=args.max_event_streams, max_streams_per_tenant=min(2, args.max_event_streams),
        abdicate=group.abdicate if group else None)
    workloads = hub.workloads
    if group is not None:
        group.adopt_tables()  # the Marathon API's tables: their rows are in ZooKeeper too
    framework = hub.framework(store, workloads, tenants, cfg, args.refuse_seconds)
    workloads.on_change, workloads.kill = framework.wake, framework.kill
    framework_id = store.get_meta(FRAMEWORK_ID_KEY)
    driver = MesosSchedulerDriver(
        framework, framework_info(args, tenants, framework_id), master,
        implicit_acknowledgements=False, principal=args.principal, secret=read_secret(args),
        failover=True)
    if gate is not None:
        gate.local = make_app(workloads, tenants, hub)
    else:
        server = serve(make_app(workloads, tenants, hub), host, port, options)
        threading.Thread(target=server.run, name="api", daemon=True).start()
    log.info("API on %s (%d threads, %d connections, %d s idle timeout), master %s, "
             "framework id %s, tenants %s", api_server.address_of(server), options.threads,
             options.connection_limit, options.channel_timeout, master,
             framework_id or "(new)", ", ".join(t.id for t in tenants.all))
    driver.start()
    while not stop.wait(0.5) and framework.fatal is None and not driver.aborted:
        if group is not None and group.lost:  # as Marathon: stop; a supervisor restarts us
            framework.fatal = f"no longer the leader: {group.lost}"
            break
        if group is not None and group.abdicated:  # as Marathon: the abdicated leader exits
            log.warning("leadership abdicated: exiting (a supervisor starts a standby again)")
            break
        framework.tick()
        hub.tick()
    if driver.aborted and framework.fatal is None:
        # pymesos gives up on errors it cannot retry (e.g. 401 from the master)
        framework.fatal = "the connection to the master failed"
    if framework.fatal:
        log.error("exiting: %s", framework.fatal)
    log.info("stopping (the framework fails over: its tasks keep running)")
    driver.stop(failover=True)
    hub.close()
    api_server.stop(server)
    store.close()
    if group is not None:
        group.close()
    return 1 if framework.fatal else 0


def _state_url(args: argparse.Namespace) -> str:
    if not args.state:
        raise ConfigError("give --state sqlite:///PATH.db (one scheduler) or --zk zk://…/PATH "
                          "(several, the state in ZooKeeper)")
    return args.state


def _standby(args: argparse.Namespace, tenants: Tenants, host: str, port: int,
             options: api_server.ServerOptions) -> tuple[ha_group.Group, LeaderGate, Any]:
    """Join the election and serve the API (forwarded to the leader until we lead)."""
    if args.state:
        raise ConfigError("--state and --zk: with --zk the state lives in ZooKeeper")
    url = ha_group.parse_zk(args.zk)
    group = ha_group.Group(url, ha_group.advertised(args.advertise, host, port),
                           args.zk_session_timeout)
    gate = LeaderGate(group.leadership.leader, group.leadership.advertise, tenants)
    server = serve(gate, host, port, options)
    threading.Thread(target=server.run, name="api", daemon=True).start()
    log.info("HA: API on %s as %s, ZooKeeper %s", api_server.address_of(server),
             group.leadership.advertise, url)
    return group, gate, server


def _stop_standby(group: ha_group.Group, server: Any) -> int:
    log.info("stopping (a standby)")
    api_server.stop(server)
    group.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-token"]:
        if len(argv) != 2:
            print("usage: hypervm-scheduler hash-token TOKEN", file=sys.stderr)
            return 2
        print(hash_token(argv[1]))
        return 0
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except HyperVMError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
