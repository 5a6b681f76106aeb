"""Issue 18: a START asks init for its early reply (init/PROTOCOL.md, START ``early_reply``),
and the work that need not hold up the START (the exec socket) runs once it is sent."""

from __future__ import annotations

from typing import Any

import pytest

from executor.guest.channel import ProcessCallbacks
from executor.guest.protocol import MsgType, start_payload
from executor.vm import HyperVM


def test_a_start_asks_for_the_early_reply() -> None:
    payload = start_payload("c", 1, ["l0"], {"args": ["true"]})
    assert payload["early_reply"] is True
    assert "early_reply" not in start_payload("c", 1, ["l0"], {"args": ["true"]},
                                              early_reply=False)


class RecordingChannel:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def register_process(self, handle: int, callbacks: Any) -> None:
        self.events.append("register")

    def unregister_process(self, handle: int) -> None:
        self.events.append("unregister")

    def send_request(self, type_: MsgType, payload: dict[str, Any]) -> str:
        self.events.append(f"send {type_.name}")
        return "pending"

    def wait_reply(self, pending: str) -> dict[str, Any]:
        self.events.append("wait")
        return {"pid": 42}


def _vm(events: list[str]) -> HyperVM:
    vm = object.__new__(HyperVM)  # only the channel and the pipelined requests are used
    vm._channel = RecordingChannel(events)  # type: ignore[assignment]
    vm._pipelined = []
    vm.awaited = []
    return vm


def test_meanwhile_runs_after_the_start_is_sent_and_before_its_reply() -> None:
    events: list[str] = []
    callbacks = ProcessCallbacks(lambda _: None, lambda _: None, lambda _: None)
    vm = _vm(events)
    handle = vm.wait_started(vm._send_spawn(MsgType.START, {}, "c", 1, callbacks),
                             lambda: events.append("meanwhile"))
    assert events == ["register", "send START", "meanwhile", "wait"]
    assert handle.pid == 42


def test_a_failing_meanwhile_fails_the_start_cleanly() -> None:
    events: list[str] = []

    def broken() -> None:
        raise RuntimeError("no thread")

    callbacks = ProcessCallbacks(lambda _: None, lambda _: None, lambda _: None)
    with pytest.raises(RuntimeError, match="no thread"):
        vm = _vm(events)
        vm.wait_started(vm._send_spawn(MsgType.START, {}, "c", 1, callbacks), broken)
    assert events == ["register", "send START", "unregister"]
