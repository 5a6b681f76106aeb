"""Where a warm launch's time goes in the executor: ``python -m bench.warmfast --stamps`` puts
this directory first on the launched executor's PYTHONPATH with HYPERVM_BENCH_STAMPS=DIR. Each
function of :data:`STAMPED` (the launch path from LAUNCH to TASK_RUNNING) then appends one line
to ``DIR/t-PID.txt``: its name, when it began (ms after ``on_launch`` began) and how long it took
(ms). Any other process, or without the variable, is untouched. With HYPERVM_BENCH_STAMPS_T0
too (``python -m bench.runfast --stamps``), the CLI of a cold ``hypervm run`` stamps
:data:`COLD_STAMPED` instead, in ms after its exec.

With HYPERVM_BENCH_TO_CREATE=FILE instead (``python -m bench.tocreate``), the CLI of a cold
run writes ``MS CPU_MS`` to FILE when its domain's createXML begins (ms after its exec, as
above, and its own CPU time), releases the VM's uid reservation and exits 0: no VM is
created, and nothing is imported ahead or wrapped: ``Hypervisor.create`` is replaced right after
the run itself imports executor.libvirt.hypervisor (a meta path finder), so the run's imports
happen in its own order (executor.libvirt.preload's thread included).

Mind: wrapping imports each stamped module when the executor starts, so a stamped launch never
pays a lazy import of one of them on its clock (a plain one did until the executor preloaded
the pool's client: executor.mesos.runtime.POOL_MODULES): compare whole launches unstamped. A
stamped cold run's functions are wrapped right after the run itself imports their modules (a
meta path finder), so its imports keep their order and place (before createXML or while the
guest boots) and run as a plain run's do (e.g. with the CLI's GC pause)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import threading
import time

#: typing.TYPE_CHECKING without importing typing: a cold run's CLI no longer imports it before
#: its createXML, and this hook must not import what the run would not (bench.tocreate)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: (module, attribute path) of each stamped function, in launch order
STAMPED = (
    ("executor.mesos.executor", "ExecutorCore.on_launch"),
    ("executor.mesos.executor", "ExecutorCore._send"),
    ("executor.mesos.runtime", "VMPod.boot"),
    ("executor.launcher", "Launcher.resolve"),
    ("executor.mesos.runtime", "build_container"),
    ("executor.pool.claim", "claim_ports_later"),
    ("executor.pool.adopt", "_give_pod"),
    ("executor.pool.adopt", "bound_pool_vcpus"),
    ("executor.guest.channel", "GuestChannel.attach"),
    ("executor.vm", "HyperVM.configure_network"),
    ("executor.vm", "HyperVM.give_owned_shares"),
    ("executor.pool.adopt", "give_devices"),
    ("executor.libvirt.hypervisor", "Hypervisor.set_cpu_bounds"),
    ("executor.pool.claim", "wait_binds"),
    ("executor.pool.claim", "PortsPending.wait"),
    ("executor.vm", "HyperVM.start"),
    ("executor.mesos.executor", "ExecutorCore.on_started"),
)


#: the cold ``hypervm run IMAGE -- true`` path (``python -m bench.runfast --stamps``), leaves
#: first: a function another module imports by name is wrapped before that module imports it.
#: Its origin is the CLI's exec: HYPERVM_BENCH_STAMPS_T0, the parent's ``time.perf_counter()``
#: when it started the CLI (CLOCK_MONOTONIC on Linux: one clock for every process)
COLD_STAMPED = (
    ("vmimage.boot", "resolve_boot"),
    ("executor.libvirt.hypervisor", "Hypervisor.__init__"),
    ("executor.libvirt.hypervisor", "Hypervisor.create"),
    ("executor.libvirt.hypervisor", "Hypervisor._open"),
    ("executor.libvirt.starter", "Starter.create"),
    ("executor.libvirt.starter", "_open"),  # in the starter child: its connection, createXML
    ("executor.libvirt.identity", "for_vm"),
    ("executor.guest.channel", "GuestChannel.connect"),
    ("executor.vm", "HyperVM.boot"),
    ("executor.vm", "HyperVM.start"),
    ("executor.vm", "HyperVM.discard"),
    ("executor.cli.run", "run_command"),
    # the host's side after createXML (task coldend): READY's and the EXIT's arrival (the
    # channel's reader thread), the VM's end step by step
    ("executor.guest.channel", "GuestChannel._dispatch"),  # its first call: READY's arrival
    ("executor.vm", "HyperVM.configure_network"),
    ("executor.vm", "HyperVM.send_start"),
    ("executor.vm", "HyperVM.wait_started"),
    ("executor.runner", "RunningProcess.on_exit"),
    ("executor.libvirt.qemu_process", "QemuProcess.stop"),
    ("executor.vm", "HyperVM.destroy"),
    ("executor.guest.channel", "GuestChannel.close"),
    ("executor.libvirt.hypervisor", "Hypervisor.close"),
    ("executor.libvirt.starter", "Starter.close"),
    ("executor.vm", "HyperVM._end_identity"),
)


def _install(out_dir: str, cold_origin: str | None = None) -> None:
    outs: dict[int, Any] = {}
    origin: list[float] = [float(cold_origin)] if cold_origin else []
    lock = threading.Lock()
    vcpu_seen: list[bool] = []

    def stamp(name: str, began: float, ended: float) -> None:
        with lock:
            if not origin:
                return
            pid = os.getpid()  # a forked child (the starter) closed its parent's descriptors
            if pid not in outs:
                path = os.path.join(out_dir, f"t-{pid}.txt")
                outs[pid] = open(path, "a", buffering=1)  # noqa: SIM115
            at, took = (began - origin[0]) * 1000, (ended - began) * 1000
            outs[pid].write(f"{name} {at:.3f} {took:.3f}\n")

    def wrapped(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "GuestChannel._dispatch" and not vcpu_seen:  # READY's arrival: the
                vcpu_seen.append(True)  # guest's boot, before the run is told (and sends more)
                _stamp_vcpu(lambda what, secs: stamp(what, origin[0], origin[0] + secs),
                            _domain_of(args[0] if args else None))
            began = time.perf_counter()
            if name == "ExecutorCore.on_launch" and not origin:
                origin.append(began)
            try:
                result = fn(*args, **kwargs)
            finally:
                stamp(name, began, time.perf_counter())
            if name == "_open" and result[0] is not None:  # the starter child's connection
                return _Timed(result[0], {"createXML": wrapped("starter.createXML",
                                                               result[0].createXML)}), result[1]
            return result
        return call

    def wrap_in(owner: Any, path: str) -> None:
        *parents, attr = path.split(".")
        try:
            for part in parents:
                owner = getattr(owner, part)
            fn = getattr(owner, attr)
        except AttributeError:  # another commit's tree (warmfast --baseline) may lack it
            return
        setattr(owner, attr, wrapped(path, fn))

    def wrap_all(paths: list[str], owner: Any) -> None:
        for path in paths:
            wrap_in(owner, path)

    if cold_origin:  # each wrapped right after the run itself imports its module
        by_module: dict[str, list[str]] = {}
        for module, path in COLD_STAMPED:
            by_module.setdefault(module, []).append(path)
        for module, paths in by_module.items():
            _when_imported(module, functools.partial(wrap_all, paths))
        return
    for module, path in STAMPED:
        wrap_in(importlib.import_module(module), path)


#: where libvirt keeps a running domain's QEMU pid (executor.libvirt.starter.LIBVIRT_PID_DIR)
_PID_DIR = "/run/libvirt/qemu"


def _domain_of(channel: Any) -> str | None:
    """The domain whose guest channel this is (its socket lives in the VM's run dir, named
    after the domain)."""
    path = getattr(channel, "socket_path", None)
    return os.path.basename(os.path.dirname(str(path))) if path is not None else None


def _stamp_vcpu(stamp: Any, domain: str | None) -> None:
    """``vcpu.run_at_READY`` and ``vcpu.wait_at_READY``: the vCPU thread of ``domain``'s QEMU,
    its time on a CPU and waiting for one (its schedstat, ns), as stamps that begin at 0 and
    take that many ms: what the guest's boot cost, and what it waited for a core. Taken
    before READY is dispatched (the run, once told, sends the guest more work)."""
    try:
        with open(os.path.join(_PID_DIR, f"{domain}.pid")) as f:
            tasks = f"/proc/{f.read().strip()}/task"
        for task in os.listdir(tasks):
            with open(f"{tasks}/{task}/comm") as f:
                if not f.read().startswith("CPU 0/"):
                    continue
            with open(f"{tasks}/{task}/schedstat") as f:
                run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
            stamp("vcpu.run_at_READY", run_ns / 1e9)
            stamp("vcpu.wait_at_READY", wait_ns / 1e9)
            return
    except (OSError, ValueError):
        return  # no such domain (not a libvirt VM's channel): nothing to stamp


class _Timed:
    """An object with some of its methods replaced (a libvirt connection takes no attribute)."""

    def __init__(self, target: Any, methods: dict[str, Any]) -> None:
        self._target, self._methods = target, methods

    def __getattr__(self, name: str) -> Any:
        return self._methods.get(name) or getattr(self._target, name)


class _AfterImport:
    """A meta path finder that runs ``then(module)`` right after ``name`` is first imported
    (by the code under test, when it would be anyway), then steps aside."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec: Any = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_then(module: Any) -> None:
            exec_module(module)
            self.then(module)

        spec.loader.exec_module = exec_then
        return spec


def _when_imported(name: str, then: Any) -> None:
    """``then(module)`` once ``name`` is imported: now if it is already."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def _stop_at_create(out_path: str, origin: float) -> None:
    ready_path = out_path + ".starter"

    def create(self: Any, spec: Any) -> Any:
        at = (time.perf_counter() - origin) * 1000
        cpu = time.process_time() * 1000
        if getattr(self, "_starter", None) is not None:
            # a starter child makes the createXML: it begins once the child is connected too;
            # its CPU is the run's as well
            deadline = time.monotonic() + 10
            while not os.path.exists(ready_path) and time.monotonic() < deadline:
                time.sleep(0.0005)
            child_at, child_cpu = (float(x) for x in open(ready_path).read().split())
            if os.environ.get("HYPERVM_BENCH_TO_CREATE_PARTS"):  # each side's own figures
                with open(os.environ["HYPERVM_BENCH_TO_CREATE_PARTS"], "a") as parts:
                    parts.write(f"{at:.3f} {(child_at - origin) * 1000:.3f} {cpu:.3f} "
                                f"{child_cpu:.3f}\n")
            at, cpu = max(at, (child_at - origin) * 1000), cpu + child_cpu
        with open(out_path, "w") as out:
            out.write(f"{at:.3f} {cpu:.3f}\n")
        importlib.import_module("executor.libvirt.identity").release(spec.name)
        os._exit(0)

    def patch(hypervisor: Any) -> None:
        hypervisor.Hypervisor.create = create

    def patch_starter(starter: Any) -> None:
        waits = starter._next_message

        def ready(*args: Any) -> Any:  # in the starter child (fd, limit[, parent])
            if not os.path.exists(ready_path):  # its first wait: for the request
                with open(ready_path + ".tmp", "w") as out:
                    out.write(f"{time.perf_counter()} {time.process_time() * 1000:.3f}\n")
                os.rename(ready_path + ".tmp", ready_path)
            return waits(*args)

        starter._next_message = ready

    _when_imported("executor.libvirt.hypervisor", patch)
    _when_imported("executor.libvirt.starter", patch_starter)


if os.environ.get("HYPERVM_BENCH_TO_CREATE") and os.environ.get("HYPERVM_BENCH_STAMPS_T0"):
    _stop_at_create(os.environ["HYPERVM_BENCH_TO_CREATE"],
                    float(os.environ["HYPERVM_BENCH_STAMPS_T0"]))
elif os.environ.get("HYPERVM_BENCH_STAMPS"):
    _install(os.environ["HYPERVM_BENCH_STAMPS"], os.environ.get("HYPERVM_BENCH_STAMPS_T0"))
