"""Pure parts of issue 17: the session wire, detach keys, signals, the rotated log, names."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from executor import session
from executor.cli.console import DetachFilter
from executor.cli.lifecycle import parse_signal
from executor.guest.protocol import process_payload, resize_payload
from executor.mesos.exec_socket import socket_path
from executor.supervisor.box import Box, NoSuchContainer, find
from executor.supervisor.logfile import LogWriter, follow, format_record, read_records
from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec, ProtocolError
from hypervm.podspec import Process


def test_session_frames_round_trip_and_bad_frames_are_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(session.encode_json(session.REQUEST, {"op": "wait"}) +
                  session.encode(session.OUT, b"hi"))
        kind, payload = session.read_frame(b)
        assert (kind, session.frame_json(payload)) == (session.REQUEST, {"op": "wait"})
        assert session.read_frame(b) == (session.OUT, b"hi")
        a.sendall(session.HEADER.pack(b"Z", 1) + b"x")
        with pytest.raises(session.WireError):
            session.read_frame(b)
        a.sendall(session.HEADER.pack(b"O", session.MAX_FRAME + 1))
        with pytest.raises(session.WireError):
            session.read_frame(b)


def test_exec_request_inherits_the_container_env_and_checks_args() -> None:
    base = Process(args=("sleep", "1"), env=("A=1", "B=2"), cwd="/srv", uid=5, gid=6)
    process = session.exec_process({"args": ["sh"], "env": ["B=3"], "tty": True}, base)
    assert process.env == ("A=1", "B=3") and process.cwd == "/srv" and process.tty
    assert (process.uid, process.gid, process.stdin) == (5, 6, False)
    with pytest.raises(InvalidSpec):
        session.exec_process({"args": []}, base)


def test_detach_keys_are_found_across_reads() -> None:
    keys = DetachFilter()
    assert keys.feed(b"ls\r") == (b"ls\r", False)
    assert keys.feed(b"a\x10") == (b"a", False)
    assert keys.feed(b"\x11") == (b"", True)
    keys = DetachFilter()
    assert keys.feed(b"\x10") == (b"", False)
    assert keys.feed(b"x") == (b"\x10x", False)  # a lone Ctrl-P still reaches the process


def test_signals_by_name_or_number() -> None:
    assert (parse_signal("USR1"), parse_signal("sigterm"), parse_signal("9")) == (10, 15, 9)
    with pytest.raises(InvalidSpec, match="--signal"):
        parse_signal("NOPE")


def test_tty_and_resize_payloads() -> None:
    assert "tty" not in process_payload(Process(args=("sh",)))
    assert process_payload(Process(args=("sh",), tty=True))["tty"] is True
    assert resize_payload(3, 24, 80) == {"handle": 3, "rows": 24, "cols": 80}
    with pytest.raises(ProtocolError):
        resize_payload(3, 0, 80)


def test_log_rotates_and_reads_in_order(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    writer = LogWriter(log, max_bytes=200)
    for i in range(10):
        writer.write("stdout" if i % 2 else "stderr", f"line {i}\n".encode())
    writer.write("stdout", b"partial")
    writer.close()
    records, offset = read_records(log)
    texts = [r["d"] for r in records]
    assert texts[-1] == "partial" and texts[-2] == "line 9\n"
    numbers = [int(t.split()[1]) for t in texts[:-1]]
    assert numbers == sorted(numbers) and numbers[0] > 0  # in order; the oldest went
    assert log.stat().st_size <= 200 and offset == log.stat().st_size
    assert format_record({"t": 0, "d": "x\n"}, True) == "1970-01-01T00:00:00.000000Z x\n"
    assert list(follow(log, offset, lambda: True)) == []


def test_names_are_unique_and_found(tmp_path: Path) -> None:
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    box = Box.create(cfg, "web")
    with pytest.raises(InvalidSpec, match="in use"):
        Box.create(cfg, "web")
    box.write({"name": "web", "id": "hypervm-web-1234", "created": 1})
    assert find(cfg, "web") == box and find(cfg, "hypervm-web-1234") == box
    assert json.loads(box.state_file.read_text())["id"] == "hypervm-web-1234"
    for bad in ("nope", "../web", ""):
        with pytest.raises(NoSuchContainer):
            find(cfg, bad)
    # a state without a live supervisor is not reported running
    box.write({"name": "web", "status": "running", "supervisor_pid": 1, "created": 1})
    assert box.current()["status"] == "exited"


def test_task_socket_names_are_safe(tmp_path: Path) -> None:
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    assert socket_path(cfg, "web.1") == tmp_path / "tasks" / "web.1.sock"
    odd = socket_path(cfg, "../../etc/x")
    assert odd.parent == tmp_path / "tasks" and odd.name.startswith("sha256-")
