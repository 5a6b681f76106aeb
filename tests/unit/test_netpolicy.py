"""The guests' network policy (issue 15 finding 4): its settings, the nft ruleset, and that
ruleset in force inside network namespaces this test makes (never the host's own)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from executor import netpolicy
from hypervm.config import HostService, NetPolicy, config_from_env
from hypervm.errors import InvalidSpec, NetworkError


def test_default_policy_enforces_with_no_extra_ranges() -> None:
    policy = config_from_env({}).net_policy
    assert policy == NetPolicy(deny=(), allow_host=(), enforce=True)


def test_settings_are_parsed() -> None:
    policy = config_from_env({
        "HYPERVM_NET_DENY": " 10.0.0.0/8, 192.168.1.7 ,fd00::/8",
        "HYPERVM_NET_ALLOW_HOST": "127.0.0.1:5000,[::1]:53/udp, 192.0.2.2:53/UDP",
    }).net_policy
    assert policy.deny == (ipaddress.ip_network("10.0.0.0/8"),
                           ipaddress.ip_network("192.168.1.7/32"),
                           ipaddress.ip_network("fd00::/8"))
    assert policy.allow_host == (
        HostService(ipaddress.ip_address("127.0.0.1"), 5000, "tcp"),
        HostService(ipaddress.ip_address("::1"), 53, "udp"),
        HostService(ipaddress.ip_address("192.0.2.2"), 53, "udp"))
    assert [s.describe() for s in policy.allow_host] == [
        "127.0.0.1:5000/tcp", "[::1]:53/udp", "192.0.2.2:53/udp"]
    assert config_from_env({"HYPERVM_NET_POLICY": "off"}).net_policy.enforce is False


@pytest.mark.parametrize(("name", "value", "message"), [
    ("HYPERVM_NET_DENY", "10.0.0.0/33", "not an address range"),
    ("HYPERVM_NET_DENY", "example.com", "not an address range"),
    ("HYPERVM_NET_ALLOW_HOST", "localhost:5000", "does not start with an IP"),
    ("HYPERVM_NET_ALLOW_HOST", "127.0.0.1", "no port"),
    ("HYPERVM_NET_ALLOW_HOST", "127.0.0.1:0", "no port"),
    ("HYPERVM_NET_ALLOW_HOST", "127.0.0.1:70000", "no port"),
    ("HYPERVM_NET_ALLOW_HOST", "127.0.0.1:53/sctp", "unknown protocol"),
    ("HYPERVM_NET_POLICY", "maybe", "unknown value"),
])
def test_bad_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as info:
        config_from_env({name: value})
    assert info.value.field == name and info.value.hint


def test_ruleset_filters_only_qemu_uids_and_denies_host_and_link_local() -> None:
    policy = config_from_env({"HYPERVM_NET_DENY": "10.0.0.0/8",
                              "HYPERVM_NET_ALLOW_HOST": "127.0.0.1:5000"}).net_policy
    script = netpolicy.ruleset(policy, [(200000, 265535), (64055, 64055)], ("127.0.0.53",))
    lines = [line.strip() for line in script.splitlines()]
    # replaced atomically, whatever was there
    assert lines[:3] == ["table inet hypervm", "delete table inet hypervm",
                         "table inet hypervm {"]
    assert "meta skuid { 200000-265535, 64055 } jump guest" in lines
    guest = lines[lines.index("chain guest {") + 1:]
    # established first (published ports, answers), then the allow-list, then the refusals
    assert guest[0] == "ct state established,related accept"
    assert guest[1] == "ip daddr 127.0.0.1 tcp dport 5000 accept"
    assert guest[2] == "ip daddr 127.0.0.53 meta l4proto { tcp, udp } th dport 53 accept"
    assert guest[3].startswith("fib daddr type { local,")
    v4 = next(line for line in guest if line.startswith("ip daddr {"))
    assert "127.0.0.0/8" in v4 and "169.254.0.0/16" in v4 and "10.0.0.0/8" in v4
    v6 = next(line for line in guest if line.startswith("ip6 daddr {"))
    assert "::1/128" in v6 and "fe80::/10" in v6
    assert "{  }" not in script


def test_resolvers_of_resolv_conf() -> None:
    text = "# x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bogus\n" \
           "search example.com\n"
    assert netpolicy.resolvers(text) == ("10.255.255.53", "fe80::1")


def test_off_installs_nothing_and_removes_a_table_left(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
        calls.append(list(args))
        return subprocess.CompletedProcess(args, 0, "table inet hypervm {}", "")

    monkeypatch.setattr(netpolicy, "_nft", nft)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/nft")
    netpolicy.enforce(config_from_env({"HYPERVM_NET_POLICY": "off"}))
    assert calls == [["list", "table", "inet", "hypervm"], ["delete", "table", "inet", "hypervm"]]
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no nftables: nothing to remove
    netpolicy.enforce(config_from_env({"HYPERVM_NET_POLICY": "off"}))
    assert len(calls) == 2


def test_without_nft_the_boot_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NetworkError, match="nftables") as info:
        netpolicy.enforce(config_from_env({}))
    assert "HYPERVM_NET_POLICY=off" in (info.value.hint or "")


class FakeNft:
    """nft over one table: ``-f`` installs a script (its listing derived from it), ``list``
    lists it (rc 1 when there is none); every call recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.table: str | None = None

    def __call__(self, args: list[str], script: str | None = None
                 ) -> subprocess.CompletedProcess:
        self.calls.append(args[0])
        if args[0] == "-f":
            self.table = f"listed {script}"
        elif self.table is None:
            return subprocess.CompletedProcess(args, 1, "", "No such file or directory")
        return subprocess.CompletedProcess(args, 0, self.table or "", "")


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    fake = FakeNft()
    monkeypatch.setattr(netpolicy, "_nft", fake)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/nft")
    return fake


def test_a_table_exactly_as_installed_is_not_installed_again(nft: FakeNft, tmp_path) -> None:  # noqa: ANN001
    """The ~17 ms ``nft -f`` of every VM start is paid once: while the table lists as the
    last install of the same script left it, a ``list`` (~5 ms) is all; the record is
    root-only."""
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    netpolicy.enforce(cfg, "nameserver 10.0.0.53\n")
    assert nft.calls == ["-f", "list"]  # no record: installed, then recorded
    assert (tmp_path / netpolicy.RECORD).stat().st_mode & 0o777 == 0o600
    nft.calls.clear()
    netpolicy.enforce(cfg, "nameserver 10.0.0.53\n")
    netpolicy.enforce(cfg, "nameserver 10.0.0.53\n")
    assert nft.calls == ["list", "list"]


def test_any_doubt_installs_the_table_again(nft: FakeNft, tmp_path) -> None:  # noqa: ANN001
    """Fail closed: a table changed or gone (a firewall reload), other settings, a record
    unreadable or missing - each installs the policy again."""
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    record = tmp_path / netpolicy.RECORD
    netpolicy.enforce(cfg)
    for change in (lambda: setattr(nft, "table", nft.table + " extra rule"),
                   lambda: setattr(nft, "table", None),
                   lambda: record.write_text("{not json"),
                   lambda: record.unlink()):
        change()
        nft.calls.clear()
        netpolicy.enforce(cfg)
        assert "-f" in nft.calls
        nft.calls.clear()
        netpolicy.enforce(cfg)
        assert nft.calls == ["list"]  # recorded again
    other = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path), "HYPERVM_NET_DENY": "10.0.0.0/8"})
    nft.calls.clear()
    netpolicy.enforce(other)
    assert nft.calls == ["-f", "list"] and "10.0.0.0/8" in (nft.table or "")


def test_a_failed_install_is_not_recorded(nft: FakeNft, tmp_path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
                                          ) -> None:
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    monkeypatch.setattr(netpolicy, "_nft", lambda args, script=None: subprocess.CompletedProcess(
        args, 1, "", "Error: Could not process rule"))
    with pytest.raises(NetworkError, match="Could not process rule"):
        netpolicy.enforce(cfg)
    assert not (tmp_path / netpolicy.RECORD).exists()


def test_describe_names_the_settings() -> None:
    policy = config_from_env({"HYPERVM_NET_DENY": "10.0.0.0/8",
                              "HYPERVM_NET_ALLOW_HOST": "127.0.0.1:5000"}).net_policy
    text = netpolicy.describe(policy)
    assert "the host" in text and "link-local" in text and "10.0.0.0/8" in text
    assert "127.0.0.1:5000/tcp" in text


# --- the ruleset in force, inside network namespaces made here ------------------------------

NEEDS_NS = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare")
    or not shutil.which("ip"), reason="needs root, nft, unshare and ip")
VM_UID = 200123

PROBE = textwrap.dedent("""
    import encodings.idna, os, socket, sys  # idna: before losing access to the stdlib
    def connect(host, port):
        try:
            socket.create_connection((host, port), timeout=3).close()
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return type(e).__name__
    uid = int(sys.argv[1])
    if uid:
        os.setgid(uid); os.setgroups([]); os.setuid(uid)
    print(" ".join(connect(h, int(p)) for h, p in (t.split(",") for t in sys.argv[2:])))
""")

LISTEN = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket()
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen()
    time.sleep(30)
""")

SCENE = textwrap.dedent("""
    set -e
    ip link set lo up
    # "the outside world" and "a metadata service": a second namespace behind a veth pair
    ip netns add "$NS"
    PIDS=""
    trap 'kill $PIDS 2>/dev/null || true; ip netns del "$NS"' EXIT
    ip link add hvout0 type veth peer name hvout1 netns "$NS"
    ip addr add 198.51.100.1/24 dev hvout0; ip link set hvout0 up
    ip route add 169.254.169.254/32 dev hvout0
    ip -n "$NS" link set lo up
    ip -n "$NS" addr add 198.51.100.2/24 dev hvout1
    ip -n "$NS" addr add 169.254.169.254/32 dev hvout1
    ip -n "$NS" link set hvout1 up
    ip -n "$NS" route add default dev hvout1
    for port in 7001 7002; do
        "$PY" -c "$LISTEN" "$port" &
        PIDS="$PIDS $!"
    done
    ip netns exec "$NS" "$PY" -c "$LISTEN" 80 &
    PIDS="$PIDS $!"
    sleep 1
    nft -f "$RULES"
    TARGETS="127.0.0.1,7001 127.0.0.1,7002 198.51.100.1,7001 169.254.169.254,80 198.51.100.2,80"
    echo "root $("$PY" -c "$PROBE" 0 $TARGETS)"
    echo "vm $("$PY" -c "$PROBE" $VM_UID $TARGETS)"
""")


@NEEDS_NS
def test_ruleset_in_force_refuses_host_and_metadata_allows_outside(tmp_path) -> None:  # noqa: ANN001
    """In a network namespace of its own: a socket of a VM uid cannot reach the host's loopback
    (but the allow-listed port), any host address, nor 169.254.169.254, but reaches "the
    outside" (a second namespace); root, the control, reaches everything."""
    policy = config_from_env({"HYPERVM_NET_ALLOW_HOST": "127.0.0.1:7002"}).net_policy
    rules = tmp_path / "rules.nft"
    rules.write_text(netpolicy.ruleset(policy, [(200000, 265535)]))
    env = {**os.environ, "NS": f"hvtest-{os.getpid()}", "RULES": str(rules), "PY": sys.executable,
           "PROBE": PROBE, "LISTEN": LISTEN, "VM_UID": str(VM_UID)}
    # unshare -n: the host's own network namespace is never touched
    result = subprocess.run(["unshare", "--net", "--", "sh", "-c", SCENE], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["root"] == "open open open open open", result.stdout
    assert lines["vm"] == "refused open refused refused open", result.stdout
