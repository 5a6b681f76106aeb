"""Network figures of a HyperVM (user-mode networking): ``python -m bench.network``.

- boot to READY with and without a NIC (what networking costs at start);
- download of a file served by busybox httpd in the VM through a published port (host curl);
- download by the VM of a file served on the host's loopback (through 10.0.2.2);
- TCP connect time to a published port, and the round trip of a tiny HTTP request through it;
- new connections from the VM: tiny HTTP requests to the host's loopback (each is a new
  connection that passes the network policy, allow-listed here).

All traffic stays on 127.0.0.1 and inside the VM. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from executor.guest.protocol import ExitStatus
from executor.vm import HyperVM
from hypervm.config import HostService, config_from_env
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Rootfs

SERVE = ("mkdir -p /www && head -c $((SIZE_MB*1048576)) /dev/urandom > /www/big.bin && "
         "echo ok > /www/small && touch /tmp/ready && exec httpd -f -p 80 -h /www")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pod(layer: Path, script: str, net: NetworkSpec, env: tuple[str, ...] = ()) -> PodSpec:
    container = Container(name="bench", rootfs=Rootfs(layers=(layer,)),
                          process=Process(args=("sh", "-c", script), env=env))
    return PodSpec(name="bench-net", containers=(container,), network=net)


def _run(vm: HyperVM, script: str) -> tuple[int, float]:
    done = threading.Event()
    codes: list[int] = []

    def on_exit(status: ExitStatus) -> None:
        codes.append(status.code)
        done.set()

    started = time.monotonic()
    vm.exec("bench", Process(args=("sh", "-c", script)), on_exit=on_exit)
    done.wait(300)
    return (codes[0] if codes else -1), time.monotonic() - started


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": round(1000 * statistics.median(values), 2),
            "p95_ms": round(1000 * values[int(0.95 * (len(values) - 1))], 2)}


def boot_times(cfg, layer: Path, rounds: int) -> dict[str, float]:  # noqa: ANN001
    result = {}
    for mode in ("none", "user"):
        times = []
        for _ in range(rounds):
            with HyperVM(cfg, _pod(layer, "true", NetworkSpec(mode=mode))) as vm:
                vm.boot()
                times.append(vm.boot_seconds or 0.0)
        result[f"boot_{mode}_p50_s"] = round(statistics.median(times), 3)
    return result


def through_port(cfg, layer: Path, size_mb: int, requests: int) -> dict[str, object]:  # noqa: ANN001
    port = _free_port()
    net = NetworkSpec(ports=(PortMapping(port, 80, "tcp", "127.0.0.1"),))
    out: dict[str, object] = {}
    with HyperVM(cfg, _pod(layer, SERVE, net, (f"SIZE_MB={size_mb}",))) as vm:
        vm.boot()
        vm.start(vm.pod.containers[0])
        deadline = time.monotonic() + 120
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/small"],
                             check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the VM's httpd never answered")
            time.sleep(0.3)
        rates = []
        for _ in range(3):
            started = time.monotonic()
            got = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://127.0.0.1:{port}/big.bin"], capture_output=True,
                                 text=True, check=True).stdout
            rates.append(int(float(got)) / 1048576 / (time.monotonic() - started))
        out["vm_to_host_download_MBps"] = round(statistics.median(rates), 1)
        connects, rtts = [], []
        for _ in range(requests):
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port)) as s:
                connects.append(time.monotonic() - started)
                s.sendall(b"GET /small HTTP/1.0\r\n\r\n")
                while s.recv(4096):
                    pass
            rtts.append(time.monotonic() - started)
        out["connect"] = _percentiles(connects)
        out["http_request_roundtrip"] = _percentiles(rtts)
    return out


def from_host(cfg, layer: Path, size_mb: int, requests: int) -> dict[str, object]:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big.bin").write_bytes(os.urandom(size_mb * 1048576))
        handler = functools.partial(QuietHandler, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        (Path(tmp) / "small").write_text("ok\n")
        # the host's loopback is refused to guests unless allow-listed (README, Networking)
        allowed = HostService(ipaddress.ip_address("127.0.0.1"), port)
        cfg = dataclasses.replace(cfg, net_policy=dataclasses.replace(
            cfg.net_policy, allow_host=(*cfg.net_policy.allow_host, allowed)))
        try:
            with HyperVM(cfg, _pod(layer, "exec sleep 600", NetworkSpec())) as vm:
                vm.boot()
                vm.start(vm.pod.containers[0])
                rates = []
                for _ in range(3):
                    code, seconds = _run(vm, f"wget -q -O /dev/null http://10.0.2.2:{port}/big.bin")
                    if code != 0:
                        raise SystemExit(f"wget in the VM failed ({code})")
                    rates.append(size_mb / seconds)
                code, seconds = _run(vm, f"i=0; while [ $i -lt {requests} ]; do "
                                     f"wget -q -O /dev/null http://10.0.2.2:{port}/small || "
                                     "exit 1; i=$((i+1)); done")
                if code != 0:
                    raise SystemExit(f"wget in the VM failed ({code})")
        finally:
            server.shutdown()
            server.server_close()
    return {"host_to_vm_download_MBps": round(statistics.median(rates), 1),
            "vm_new_connection_request_ms": round(1000 * seconds / requests, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.network")
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = config_from_env()
    from vmimage.rootfs import build_layer_image, make_busybox_rootfs

    cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = make_busybox_rootfs(Path(tmp) / "rootfs")
        fd, name = tempfile.mkstemp(prefix="bench-net-", suffix=".erofs", dir=cfg.rootfs_dir)
        os.close(fd)
        layer = Path(name)
        try:
            build_layer_image(rootfs, layer)
            results: dict[str, object] = {
                "backend": "qemu user-mode (slirp)", "size_mb": args.size_mb,
                "network_policy": "enforce" if cfg.net_policy.enforce else "off"}
            results.update(boot_times(cfg, layer, args.boots))
            results.update(through_port(cfg, layer, args.size_mb, args.requests))
            results.update(from_host(cfg, layer, args.size_mb, args.requests))
        finally:
            layer.unlink(missing_ok=True)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
