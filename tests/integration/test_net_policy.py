"""Issue 15 finding 4 with real VMs: what a guest's traffic reaches under the network policy.

Traffic rule: every packet goes to 127.0.0.1 on the host, stays inside a VM's user-mode
network, or goes to a network namespace this test makes (a "metadata service" at
169.254.169.254 and an "outside" server at 198.51.100.7, TEST-NET-2, behind a veth pair and
two /32 routes that exist only during the test).
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor import netpolicy
from executor.launcher import boot_vm
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.vm import HyperVM
from hypervm.config import HostConfig, config_from_env
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG
from tests.integration.test_network import (
    PROBE,
    QuietHandler,
    busybox_layer,  # noqa: F401 - a fixture
    free_port,
    pod,
    run_in,
    wait_for_http,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains"),
              pytest.mark.skipif(os.geteuid() != 0, reason="the policy needs root (nftables)")]

SERVE = "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module", autouse=True)
def host_table_restored() -> Iterator[None]:
    """The policy table is the host's: leave it as this module found it."""
    before = netpolicy.installed()
    yield
    if before is None and netpolicy.installed() is not None:
        netpolicy.remove()


@pytest.fixture
def policy_vm(busybox_layer: Path) -> Iterator[Callable[..., HyperVM]]:  # noqa: F811
    """Boots a VM serving ``published`` on port 80 under the policy of ``env``; destroys
    every one at teardown."""
    vms: list[HyperVM] = []

    def boot(env: dict[str, str], name: str, ports: tuple[PortMapping, ...] = ()) -> HyperVM:
        cfg: HostConfig = config_from_env({**os.environ, **env})
        spec = pod(busybox_layer, name, SERVE, net=NetworkSpec(ports=ports))
        vm = HyperVM(cfg, spec)
        vms.append(vm)
        vm.boot(timeout=90)
        vm.start(spec.containers[0])
        return vm

    yield boot
    for vm in vms:
        vm.destroy()


@pytest.fixture
def loopback_servers() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on the host's 127.0.0.1 answering "a" and "b"."""
    servers, ports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for token in ("a", "b"):
            root = Path(tmp) / token
            root.mkdir()
            (root / "index.html").write_text(token + "\n")
            handler = functools.partial(QuietHandler, directory=str(root))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            ports.append(server.server_address[1])
        yield ports[0], ports[1]
        for server in servers:
            server.shutdown()
            server.server_close()


def probe(vm: HyperVM, *targets: str) -> list[str]:
    script = f"set -- {' '.join(targets)}; {PROBE}"
    code, out = run_in(vm, vm.pod.containers[0].name, script, timeout=120)
    assert code == 0, out
    return out.splitlines()


def test_host_loopback_refused_unless_allow_listed_and_published_ports_work(
        policy_vm, loopback_servers: tuple[int, int]) -> None:  # noqa: ANN001
    """Default: 10.0.2.2 (the host's loopback) is out of reach, but for the allow-listed
    service; a published port still serves the host. Control: with the policy off, the same
    guest reaches both loopback services (the hole this closes)."""
    a, b = loopback_servers
    host_port = free_port()
    vm = policy_vm({"HYPERVM_NET_POLICY": "enforce", "HYPERVM_NET_ALLOW_HOST": f"127.0.0.1:{b}"},
                   "pol", (PortMapping(host_port, 80, "tcp", "127.0.0.1"),))
    assert wait_for_http(f"http://127.0.0.1:{host_port}/") == b"published\n"
    assert probe(vm, f"10.0.2.2:{a}", f"10.0.2.2:{b}") == [
        f"10.0.2.2:{a} closed", f"10.0.2.2:{b} b"]
    vm.destroy()
    off = policy_vm({"HYPERVM_NET_POLICY": "off"}, "off")
    assert netpolicy.installed() is None
    assert probe(off, f"10.0.2.2:{a}", f"10.0.2.2:{b}") == [
        f"10.0.2.2:{a} a", f"10.0.2.2:{b} b"]


METADATA_NS = f"hvmd{os.getpid()}"
METADATA_LINK = f"hvmd{os.getpid() % 100000}"


OUTSIDE = "198.51.100.7"


@pytest.fixture
def metadata_service(tmp_path: Path) -> Iterator[Path]:
    """An HTTP server on port 80 of 169.254.169.254 and of OUTSIDE, in a namespace of this
    test reached from the host through a veth pair; yields its access log (one line per
    request that arrived: its Host header and path)."""
    log = tmp_path / "hits.log"
    server = ("import http.server,sys\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self):\n"
              "        host = self.headers['Host'].split(':')[0]\n"
              "        open(sys.argv[1],'a').write(host+self.path+'\\n')\n"
              "        self.send_response(200); self.end_headers(); self.wfile.write(b'meta\\n')\n"
              "    def log_message(self,*a): pass\n"
              "http.server.HTTPServer(('0.0.0.0',80),H).serve_forever()\n")
    setup = [
        ["ip", "netns", "add", METADATA_NS],
        ["ip", "link", "add", METADATA_LINK, "type", "veth", "peer", "name", "md0",
         "netns", METADATA_NS],
        ["ip", "link", "set", METADATA_LINK, "up"],
        ["ip", "-n", METADATA_NS, "addr", "add", "169.254.169.254/32", "dev", "md0"],
        ["ip", "-n", METADATA_NS, "addr", "add", f"{OUTSIDE}/32", "dev", "md0"],
        ["ip", "-n", METADATA_NS, "link", "set", "md0", "up"],
        ["ip", "-n", METADATA_NS, "link", "set", "lo", "up"],
        ["ip", "-n", METADATA_NS, "route", "add", "default", "dev", "md0"],
        ["ip", "route", "add", "169.254.169.254/32", "dev", METADATA_LINK],
        ["ip", "route", "add", f"{OUTSIDE}/32", "dev", METADATA_LINK],
    ]
    proc = None
    try:
        for argv in setup:
            subprocess.run(argv, check=True, capture_output=True)
        proc = subprocess.Popen(["ip", "netns", "exec", METADATA_NS, sys.executable, "-c",
                                 server, str(log)])
        deadline = time.monotonic() + 20
        while subprocess.run(["curl", "-sf", "-m", "2", "http://169.254.169.254/control"],
                             capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the test's metadata service never answered"
            time.sleep(0.3)
        yield log
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for address in ("169.254.169.254/32", f"{OUTSIDE}/32"):
            subprocess.run(["ip", "route", "del", address, "dev", METADATA_LINK],
                           capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", METADATA_LINK], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", METADATA_NS], capture_output=True, check=False)


def test_link_local_refused_outside_world_reached(policy_vm, metadata_service: Path) -> None:  # noqa: ANN001
    """169.254.169.254 answers the host (the control), never a guest: the guest's request
    never arrives. The "outside world" (an address that is neither the host's nor link-local)
    is reached by default."""
    vm = policy_vm({"HYPERVM_NET_POLICY": "enforce"}, "md")
    assert probe(vm, "169.254.169.254:80", f"{OUTSIDE}:80") == [
        "169.254.169.254:80 closed", f"{OUTSIDE}:80 meta"]
    assert metadata_service.read_text().splitlines() == [
        "169.254.169.254/control", f"{OUTSIDE}/"]


def test_operator_denied_range_is_refused(policy_vm, metadata_service: Path) -> None:  # noqa: ANN001
    """A range of HYPERVM_NET_DENY is refused like the host: the request never arrives."""
    vm = policy_vm({"HYPERVM_NET_DENY": "198.51.100.0/24"}, "deny")
    assert probe(vm, f"{OUTSIDE}:80") == [f"{OUTSIDE}:80 closed"]
    assert metadata_service.read_text().splitlines() == ["169.254.169.254/control"]
    assert "198.51.100.0/24" in (netpolicy.installed() or "")


def test_a_pool_vm_is_under_the_policy(busybox_layer: Path,  # noqa: F811
                                       loopback_servers: tuple[int, int]) -> None:
    """A warm pool VM gets the policy when it boots (before anyone claims it): the pod that
    claims it reaches the allow-listed loopback service and nothing else of the host."""
    a, b = loopback_servers
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-pool-"))
    cfg = config_from_env({**os.environ, "HYPERVM_NET_ALLOW_HOST": f"127.0.0.1:{b}",
                           "HYPERVM_POOL_SOCKET": str(sock_dir / "pool.sock")})
    pool = WarmPool(cfg, PoolConfig(size=1, vcpus=1, memory_mib=128, name=f"np{os.getpid()}"),
                    reap_interval=0.5)
    pool.start()
    try:
        assert pool.wait_full(240), pool.status()
        container = Container("main", Rootfs(layers=(busybox_layer,)),
                              Process(args=("sleep", "300")))
        pod = PodSpec(name=f"{TEST_TAG}-npool", containers=(container,),
                      resources=Resources(cpus=1, memory_mib=128))
        with boot_vm(cfg, pod) as vm:
            assert vm.warm
            vm.start(container)
            assert probe(vm, f"10.0.2.2:{a}", f"10.0.2.2:{b}") == [
                f"10.0.2.2:{a} closed", f"10.0.2.2:{b} b"]
    finally:
        pool.stop()
        sock_dir.rmdir()
