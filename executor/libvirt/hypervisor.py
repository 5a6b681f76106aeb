"""The thin wrapper over libvirt: the only module that imports ``libvirt`` (lazily: a cold run's
CLI, whose createXML a starter child makes, loads it only for a connection of its own).

Like nova's ``host.py``/``guest.py``: connect, create a transient domain from a
:class:`~executor.libvirt.domain.DomainSpec` (XML built by :mod:`executor.libvirt.domain_xml`),
destroy, list our domains, report lifecycle events. Every libvirt error becomes a
:mod:`hypervm.errors` class.

Domains are created with ``VIR_DOMAIN_START_AUTODESTROY``: libvirtd destroys them when the
connection that created them closes — when :meth:`Hypervisor.close` runs, or when the owning
process dies, even by SIGKILL. A VM never outlives its executor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from executor.libvirt import daclabel, rundir
from executor.libvirt.domain import (
    DOMAIN_PREFIX,
    META_OWNER_PID,
    META_OWNER_START,
    CpuTune,
    DomainSpec,
)
from executor.libvirt.domain_xml import (
    METADATA_NS,
    METADATA_PREFIX,
    domain_xml,
    metadata_element_xml,
    parse_dac_label,
    parse_domain_facts,
)
from executor.libvirt.owners import owner_metadata
from executor.libvirt.starter import Starter, create_by, create_hint, lazy_module
from hypervm.config import DEFAULT_LIBVIRT_URI
from hypervm.errors import HostError, HypervisorError, InvalidSpec

TYPE_CHECKING = False  # typing's, without importing typing (~3 ms of a cold run's start)
if TYPE_CHECKING:
    from typing import Any

    import libvirt
    import libvirt_qemu

    # executor.libvirt.events (listing and event values): imported where they are made (a
    # listing, the event thread's callbacks); a cold run makes neither before createXML (~1 ms)
    from executor.libvirt.events import DomainInfo, LifecycleEvent
else:  # loaded at their first use (a cold run's CLI: after createXML, by its starter child)
    libvirt = lazy_module("libvirt")
    libvirt_qemu = lazy_module("libvirt_qemu")

log = logging.getLogger(__name__)

LIBVIRTD_HINT = "start libvirtd: virtlogd -d; libvirtd -d"

# --- process-wide libvirt setup ---------------------------------------------------------------

_setup_lock = threading.Lock()
_event_loop: threading.Thread | None = None
_errors_silenced = False


def _log_libvirt_error(_ctx: object, err: tuple[object, ...]) -> None:
    # libvirt prints every error to stderr by default; the caller gets an exception anyway
    log.debug("libvirt: %s", err[2] if len(err) > 2 else err)


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.warning("libvirt event loop iteration failed")
            time.sleep(0.1)  # never spin


def _setup_libvirt(events: bool) -> None:
    """Silence libvirt's stderr logging and, once per process, start its event loop thread (the
    default event implementation must be registered before a connection is opened for that
    connection to deliver events and keepalives)."""
    global _event_loop, _errors_silenced
    with _setup_lock:
        # the first use of either module loads it (starter.lazy_module): both here, at set-up
        libvirt_qemu.VIR_DOMAIN_QEMU_AGENT_COMMAND_BLOCK  # noqa: B018
        libvirt.VIR_DOMAIN_START_AUTODESTROY  # noqa: B018
        if not _errors_silenced:
            libvirt.registerErrorHandler(_log_libvirt_error, None)
            _errors_silenced = True
        if events and _event_loop is None:
            libvirt.virEventRegisterDefaultImpl()
            _event_loop = threading.Thread(target=_run_event_loop, name="libvirt-events",
                                           daemon=True)
            _event_loop.start()


def _message(e: libvirt.libvirtError) -> str:
    return e.get_error_message() or str(e)


def _is_no_domain(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


class VM:
    """A handle on a domain created by :meth:`Hypervisor.create`."""

    def __init__(self, hypervisor: Hypervisor, name: str, uuid: str) -> None:
        self.hypervisor = hypervisor
        self.name = name
        self.uuid = uuid

    def is_running(self) -> bool:
        return self.hypervisor.is_running(self.name)

    def destroy(self) -> bool:
        return self.hypervisor.destroy(self.name)

    def wait_gone(self, timeout: float) -> None:
        self.hypervisor.wait_gone(self.name, timeout)

    def qemu_pid(self) -> int | None:
        return self.hypervisor.qemu_pid(self.name)

    def __repr__(self) -> str:
        return f"VM({self.name!r})"


EventCallback = Callable[["LifecycleEvent"], None]


class Hypervisor:
    """One libvirt connection. Closing it destroys every domain it created.

    ``autodestroy=False`` only for drivers without VIR_DOMAIN_START_AUTODESTROY (``test:///``).
    """

    def __init__(self, uri: str = DEFAULT_LIBVIRT_URI, *, events: bool = True,
                 autodestroy: bool = True, starter: Starter | None = None) -> None:
        """``starter``: a cold run's forked child that makes its first createXML (and holds
        that domain's auto-destroy); the connection is then opened after it, or when used."""
        self.uri = uri
        self._events = events
        self._autodestroy = autodestroy
        self._conn: libvirt.virConnect | None = None
        self._closed = False
        self._starter = starter  # its child holds the auto-destroy of the domain it created:
        self._started: str | None = None
        self._started_gone = False
        self._listeners: list[EventCallback] = []
        self._listeners_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._event_id: int | None = None
        self._dac_label: tuple[int, int] | None | bool = False  # False: not read yet
        #: domains created through this connection and not seen stopping: UUIDs (None: adopted)
        self._created: dict[str, str | None] = {}
        #: of those, the ones it auto-destroys when it closes
        self._autodestroys: set[str] = set()
        if starter is None:
            self._open()

    def _open(self) -> None:
        _setup_libvirt(self._events)
        self._conn = _connect(self.uri)
        if self._events:
            self._event_id = self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
            try:
                self._conn.registerCloseCallback(self._on_close, None)
            except libvirt.libvirtError as e:  # local drivers (test:///) cannot lose a daemon
                log.debug("no close callback on %s: %s", self.uri, _message(e))

    # -- connection ----------------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        if self._closed:
            raise HypervisorError(f"the connection to {self.uri} is closed")
        with self._open_lock:  # a starter's: opened at the first use (see _create_by_starter)
            if self._conn is None:
                self._open()
        assert self._conn is not None
        return self._conn

    def version(self) -> str:
        """``libvirt X.Y.Z, <driver> X.Y.Z`` of the daemon we talk to."""
        try:
            lib, hv, kind = self.conn.getLibVersion(), self.conn.getVersion(), self.conn.getType()
        except libvirt.libvirtError as e:
            raise HostError(f"libvirt at {self.uri} does not answer: {_message(e)}",
                            hint=LIBVIRTD_HINT) from e
        return f"libvirt {_dotted(lib)}, {kind} {_dotted(hv)}"

    def alive(self) -> bool:
        """False once the connection to libvirtd is lost. No round trip: without an event loop
        a closed socket is noticed (close callback too) only by a call failing on it."""
        conn = self._conn
        try:
            return conn is not None and conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def reopen(self) -> None:
        """A new connection in place of a lost one, this object kept (the pool daemon's:
        executor.pool.reconnect); not with events (a listener would miss what happened
        meanwhile). HostError while libvirtd does not answer."""
        if self._event_id is not None:
            raise HypervisorError("a connection with events is not reopened")
        # the lost one is closed once unused (virConnect.__del__), not here: a call another
        # thread has in flight on it fails as on any lost connection, not on a closed object
        self._conn = _connect(self.uri)
        self._dac_label = False  # a restarted (upgraded) libvirtd may run QEMU as another user

    def close(self) -> None:
        """Close the connection: libvirt destroys every domain created through it (the
        starter's child, the one it created, unless it is gone). Idempotent."""
        self._closed = True
        held, self._starter = self._starter, None
        if held is not None:
            held.close(gone=self._started_gone)
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._event_id is not None:
                conn.domainEventDeregisterAny(self._event_id)
                with contextlib.suppress(libvirt.libvirtError):
                    conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError as e:
            log.debug("closing %s: %s", self.uri, _message(e))

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- domains -------------------------------------------------------------------------------

    def create(self, spec: DomainSpec) -> VM:
        """Start a transient, auto-destroyed domain for ``spec``: stamps this process as the
        owner (unless the spec names one) so ``hypervm gc`` can tell leftovers, and prepares
        the run directories QEMU writes into."""
        if META_OWNER_PID not in spec.metadata:
            spec = dataclasses.replace(spec, metadata={**spec.metadata, **owner_metadata()})
        elif META_OWNER_START not in spec.metadata:
            raw = spec.metadata[META_OWNER_PID]
            if not raw.isdigit():
                raise InvalidSpec(f"metadata[{META_OWNER_PID!r}]", f"{raw!r} is not a pid")
            owner = owner_metadata(int(raw))
            spec = dataclasses.replace(spec, metadata={**owner, **spec.metadata})
        xml = domain_xml(spec)
        for directory in {spec.channel_socket.parent, spec.console_log.parent}:
            self.prepare_run_dir(directory, spec.identity)
        log.debug("creating domain %s:\n%s", spec.name, xml)
        started = time.monotonic()
        if self._starter is not None and self._started is None:
            name, uuid = self._create_by_starter(self._starter, spec.name, xml)
        else:
            flags = libvirt.VIR_DOMAIN_START_AUTODESTROY if self._autodestroy else 0
            try:
                dom = self.conn.createXML(xml, flags)
            except libvirt.libvirtError as e:
                raise HypervisorError(f"cannot start VM {spec.name}: {_message(e)}",
                                      hint=create_hint(_message(e))) from e
            name, uuid = dom.name(), dom.UUIDString()
            with self._listeners_lock:
                if self._autodestroy:
                    self._autodestroys.add(spec.name)
        log.info("started %s (%s, %d vCPU, %d MiB) in %.2f s", spec.name, spec.accel,
                 spec.vcpus, spec.memory_mib, time.monotonic() - started)
        with self._listeners_lock:
            self._created[spec.name] = uuid
        return VM(self, name, uuid)

    def _create_by_starter(self, held: Starter, name: str, xml: str) -> tuple[str, str]:
        """createXML by the starter's child (its connection auto-destroys the domain). Our own
        connection opens at its first use: a run whose QEMU exits by itself (``run … true``)
        never loads libvirt; its load and connection in the guest's boot window took ~30 ms
        from the boot (DEVELOPERS.md "The starter")."""
        self._starter = None
        try:
            uuid = create_by(held, self.uri, name, xml, LIBVIRTD_HINT)
        except BaseException:  # e.g. KeyboardInterrupt while waiting: the child destroys the
            held.close()  # domain if it made one (closed already after its own errors)
            raise
        self._starter, self._started = held, name
        return name, uuid

    def prepare_run_dir(self, directory: Path, owner: tuple[int, int] | None = None) -> None:
        """rundir.prepare for ``owner`` (the VM's own identity), else the user QEMU runs as."""
        rundir.prepare(directory, owner or self._qemu_label())

    def give_to_qemu(self, directory: Path) -> None:
        """Make ``directory`` (not its contents) belong to the user libvirt runs QEMU as, so a
        guest can create files in it over 9p. No-op unless root and libvirt uses DAC."""
        rundir.give(directory, self._qemu_label())

    def confines_per_vm(self) -> bool:
        """libvirt switches QEMU's user (DAC) and we may chown: each VM can run as its own
        uid (executor.libvirt.identity)."""
        return self._qemu_label() is not None and os.geteuid() == 0

    def vm_identity(self, name: str) -> tuple[int, int] | None:
        """The (uid, gid) a running domain's QEMU runs as, when it has its own (SecLabel)."""
        dom = self._lookup(name)
        if dom is None:
            return None
        try:
            return parse_domain_facts(dom.XMLDesc(0)).identity
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot inspect VM {name}: {_message(e)}") from e

    def qemu_user(self) -> tuple[int, int] | None:
        """(uid, gid) libvirt runs QEMU as; None when it does not switch users (no DAC)."""
        return self._qemu_label()

    def prefetch(self) -> None:
        """Read now what a launch would otherwise read on its clock: the user libvirt runs
        QEMU as (libvirt's capabilities take ~4 ms to compute)."""
        self._qemu_label()

    def _qemu_label(self) -> tuple[int, int] | None:
        if self._dac_label is False:  # kept per libvirtd: ~2-4 ms of a cold run (issue 17)
            self._dac_label = daclabel.qemu_label(self.uri, self._ask_dac_label)
        return self._dac_label if isinstance(self._dac_label, tuple) else None

    def _ask_dac_label(self) -> tuple[int, int] | None:
        try:
            return parse_dac_label(self.conn.getCapabilities())
        except libvirt.libvirtError as e:
            raise HostError(f"cannot read capabilities of {self.uri}: {_message(e)}",
                            hint=LIBVIRTD_HINT) from e

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if _is_no_domain(e):
                return None
            raise HypervisorError(f"cannot look up VM {name}: {_message(e)}") from e

    def destroy(self, name: str) -> bool:
        """Destroy (and undefine, if persistent) domain ``name``; True if it existed. No
        error when it is already gone."""
        with self._listeners_lock:
            self._created.pop(name, None)
            self._autodestroys.discard(name)
        dom = self._lookup(name)
        if dom is None:
            self._end_started(name)
            return False
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError as e:
            if _is_no_domain(e) or e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                self._end_started(name)
                return True  # it went away (or stopped) under our feet
            raise HypervisorError(f"cannot destroy VM {name}: {_message(e)}") from e
        self._end_started(name)
        log.info("destroyed %s", name)
        return True

    def _end_started(self, name: str) -> None:
        """``name`` is destroyed or its QEMU exited: the starter's child awaits its teardown."""
        self._started_gone |= name == self._started

    def forget(self, name: str) -> bool:
        """``name``'s QEMU has exited (a pidfd said so): libvirtd finishes its teardown by
        itself; stop reporting it as ours. No libvirt call (it would wait for that teardown).
        True when closing this connection would auto-destroy it (executor.libvirt.linger)."""
        self._end_started(name)
        with self._listeners_lock:
            self._created.pop(name, None)
            return name in self._autodestroys

    def is_running(self, name: str) -> bool:
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError as e:
            if _is_no_domain(e):
                return False
            raise HypervisorError(f"cannot query VM {name}: {_message(e)}") from e

    def wait_gone(self, name: str, timeout: float) -> None:
        """Wait until ``name`` no longer runs; HypervisorError after ``timeout`` seconds."""
        from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed  # deferred
        retrying = Retrying(wait=wait_fixed(0.05), stop=stop_after_delay(timeout),
                            retry=retry_if_result(bool), retry_error_callback=lambda _: True)
        if retrying(self.is_running, name):
            raise HypervisorError(f"VM {name} still runs after {timeout:g} s")

    def qemu_pid(self, name: str) -> int | None:
        """The pid of the QEMU process of a running domain (libvirt's pid file), or None."""
        try:
            return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # -- live changes (warm pool) -------------------------------------------------------------

    def _live(self, name: str, what: str, call: Callable[[libvirt.virDomain], object]) -> Any:
        dom = self._lookup(name)
        if dom is None:
            raise HypervisorError(f"cannot {what} of VM {name}: it does not exist")
        try:
            return call(dom)
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot {what} of VM {name}: {_message(e)}") from e

    def attach_device(self, name: str, device_xml: str) -> None:
        """Hot-add a device (e.g. domain_xml.hotplug_disk_xml) to a running domain."""
        self._live(name, "add a device to the running instance",
                   lambda dom: dom.attachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def flush_tcg(self, name: str) -> None:
        """Drop its TCG translations, their memory back (HMP ``tcg-flush``; libvirt: tainted)."""
        self.monitor_command(name, "tcg-flush", "flush the TCG translations")

    def discard_zero_pages(self, name: str) -> str:
        """Punch its guest RAM's pages of zeros out of its memfd (zero-discard.patch)."""
        return self.monitor_command(name, "discard-zero-pages",
                                    "discard the guest's zero pages").strip()

    def monitor(self, name: str, command: Mapping[str, Any], files: Sequence[int] = ()) -> Any:
        """One QMP ``command`` to the running domain's QEMU, passing ``files`` (fds) with it
        (executor.libvirt.migration); its ``return``, or HypervisorError with QEMU's ``error``
        (libvirt passes an error reply through as text). libvirt marks the domain tainted."""
        text = json.dumps(command)
        out = self._live(name, f"run {command.get('execute')}", lambda dom: (
            libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, list(files), 0)[0] if files
            else libvirt_qemu.qemuMonitorCommand(dom, text, 0)))
        reply = json.loads(out or "{}")
        if "error" in reply:
            raise HypervisorError(f"VM {name}: {command.get('execute')} failed: "
                                  f"{str(reply['error'].get('desc', reply['error']))[:300]}")
        return reply.get("return")

    def monitor_command(self, name: str, command: str, what: str | None = None) -> str:
        """Run one HMP command on the running domain's QEMU monitor and return what it printed
        (e.g. executor.network's ``hostfwd_add``; HMP reports most failures only there);
        ``what`` names it in an error. libvirt marks the domain tainted by a custom monitor
        command; nothing else changes."""
        return str(self._live(name, what or f"run {command.split(' ', 1)[0]} on the monitor",
                              lambda dom: libvirt_qemu.qemuMonitorCommand(
                                  dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
                   or "")

    def set_metadata(self, name: str, entries: Mapping[str, str]) -> None:
        """Replace the running domain's hypervm metadata (e.g. to hand it to a new owner)."""
        xml = metadata_element_xml(entries)
        self._live(name, "set the metadata", lambda dom: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, METADATA_PREFIX, METADATA_NS,
            libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def metadata(self, name: str) -> dict[str, str]:
        """The hypervm metadata of a domain ({} when it is gone)."""
        dom = self._lookup(name)
        if dom is None:
            return {}
        try:
            return dict(parse_domain_facts(dom.XMLDesc(0)).metadata)
        except libvirt.libvirtError as e:
            if _is_no_domain(e):
                return {}
            raise HypervisorError(f"cannot inspect VM {name}: {_message(e)}") from e

    def set_cpu_bounds(self, name: str, cputune: CpuTune) -> None:
        """Apply CPU bounds to a running domain (what <cputune> does at creation)."""
        sched = {k: v for k, v in (("vcpu_period", cputune.period_us),
                                   ("vcpu_quota", cputune.quota_us),
                                   ("cpu_shares", cputune.shares)) if v is not None}
        if sched:
            self._live(name, "set the CPU bounds", lambda dom: dom.setSchedulerParametersFlags(
                sched, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def set_vcpus(self, name: str, count: int) -> None:
        """Hot-plug vCPUs into the running domain up to ``count`` (each in a cgroup of its own
        with the domain's CPU quota, as libvirt does for the first; a snapshot's clone)."""
        self._live(name, f"set {count} vCPUs",
                   lambda dom: dom.setVcpusFlags(count, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def adopt(self, name: str) -> None:
        """Report lifecycle events of ``name`` (created by another process, e.g. the pool) as
        if this connection had created it."""
        with self._listeners_lock:
            self._created[name] = None

    def list_ours(self) -> list[DomainInfo]:
        """Our domains (name prefix and metadata namespace), with metadata and disk sources."""
        from executor.libvirt.events import DomainInfo  # deferred: see TYPE_CHECKING above

        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot list VMs at {self.uri}: {_message(e)}") from e
        ours = []
        for dom in domains:
            try:
                if not dom.name().startswith(DOMAIN_PREFIX):
                    continue
                facts = parse_domain_facts(dom.XMLDesc(0))
                running = bool(dom.isActive())
                uuid = dom.UUIDString()
            except libvirt.libvirtError as e:
                if _is_no_domain(e):
                    continue  # gone between the listing and now
                raise HypervisorError(f"cannot inspect VM {dom.name()}: {_message(e)}") from e
            if facts.ours:
                ours.append(DomainInfo(name=facts.name, uuid=uuid, running=running,
                                       metadata=facts.metadata, disk_paths=facts.disk_paths,
                                       share_paths=facts.share_paths))
        return ours

    # -- events --------------------------------------------------------------------------------

    def add_listener(self, callback: EventCallback) -> None:
        """Call ``callback(LifecycleEvent)`` for every lifecycle change of our domains.

        Callbacks run on the libvirt event thread: keep them short, hand work to your own thread
        (or ``loop.call_soon_threadsafe``). Requires ``events=True`` (the default).
        """
        if self._event_id is None:
            raise HypervisorError("this connection was opened without events")
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: EventCallback) -> None:
        with self._listeners_lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _on_lifecycle(self, _conn: object, dom: libvirt.virDomain, event: int, detail: int,
                      _opaque: object) -> None:
        name = dom.name()
        if not name.startswith(DOMAIN_PREFIX):
            return
        from executor.libvirt.events import EVENT_NAMES, LifecycleEvent  # see TYPE_CHECKING

        kind = EVENT_NAMES[event] if 0 <= event < len(EVENT_NAMES) else str(event)
        ev = LifecycleEvent(name=name, event=kind, detail=detail)
        uuid = dom.UUIDString()
        with self._listeners_lock:  # events come late: those of an earlier domain of a name
            if self._created.get(name, uuid) not in (uuid, None):  # we made again are not ours
                return
            if ev.stopped:
                self._created.pop(name, None)
        log.debug("event: %s %s (%s)", name, kind, ev.reason)
        self._dispatch(ev)

    def _on_close(self, _conn: object, reason: int, _opaque: object) -> None:
        """libvirtd went away (or keepalive failed): tell the listeners of every VM we created,
        since libvirtd destroys auto-destroyed domains with our connection."""
        with self._listeners_lock:
            names, self._created = sorted(self._created), {}
        if reason == libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            return
        # deferred: see TYPE_CHECKING above
        from executor.libvirt.events import CLOSE_REASONS, DISCONNECTED, LifecycleEvent

        log.warning("lost the connection to %s (%s); %d VMs affected", self.uri,
                    CLOSE_REASONS[reason] if 0 <= reason < len(CLOSE_REASONS) else reason,
                    len(names))
        for name in names:
            self._dispatch(LifecycleEvent(name=name, event=DISCONNECTED, detail=reason))

    def _dispatch(self, ev: LifecycleEvent) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(ev)
            except Exception:  # a listener's bug must not kill the event thread
                log.exception("lifecycle listener %r failed", callback)


def _connect(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HostError(f"cannot connect to libvirt at {uri}: {_message(e)}",
                        hint=LIBVIRTD_HINT) from e


def _dotted(version: int) -> str:
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"

