"""The host codec of init/PROTOCOL.md, including a hypothesis fuzz of the decoder."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.guest import protocol as proto
from executor.guest.protocol import ExitStatus, FrameDecoder, MsgType
from hypervm.errors import ProtocolError


def test_header_layout_matches_protocol_md() -> None:
    frame = proto.encode(MsgType.START, 7, b"{}")
    assert frame == struct.pack(">IHHI", 2, 0x10, 0, 7) + b"{}"
    assert proto.HEADER_SIZE == 12


def test_protocol_md_lists_every_type_with_its_number() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "init" / "PROTOCOL.md").read_text()
    for msg in MsgType:
        assert f"| 0x{msg.value:02x} | {msg.name}" in text, msg


def test_roundtrip_split_at_every_byte() -> None:
    stream = proto.encode_json(MsgType.OK, 3, {"pid": 5}) + proto.encode(MsgType.STDOUT, 1, b"hi")
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [(f.type, f.id) for f in frames] == [(MsgType.OK, 3), (MsgType.STDOUT, 1)]
        assert frames[0].json() == {"pid": 5}
        assert frames[1].payload == b"hi"
        assert decoder.pending == 0


def test_oversized_length_breaks_the_stream() -> None:
    decoder = FrameDecoder()
    bad = struct.pack(">IHHI", proto.MAX_PAYLOAD + 1, MsgType.STDOUT, 0, 1)
    with pytest.raises(ProtocolError, match="out of sync"):
        decoder.feed(bad)
    with pytest.raises(ProtocolError, match="broken"):
        decoder.feed(proto.encode(MsgType.OK, 1, b"{}"))


def test_nonzero_flags_and_unknown_types_are_rejected() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">IHHI", 0, MsgType.OK, 1, 1))
    with pytest.raises(ProtocolError, match="unknown frame type"):
        FrameDecoder().feed(struct.pack(">IHHI", 0, 0x7F, 0, 1))


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(ProtocolError):
        proto.encode(MsgType.STDIN, 1, b"x" * (proto.MAX_PAYLOAD + 1))


def test_stdin_is_split_and_eof_is_empty() -> None:
    data = b"a" * (proto.MAX_PAYLOAD + 10)
    frames = FrameDecoder().feed(b"".join(proto.encode_stdin(4, data)))
    assert [len(f.payload) for f in frames] == [proto.MAX_PAYLOAD, 10]
    assert FrameDecoder().feed(b"".join(proto.encode_stdin(4, b"")))[0].payload == b""


def test_json_payload_errors() -> None:
    with pytest.raises(ProtocolError):
        proto.Frame(MsgType.OK, 1, b"not json").json()
    with pytest.raises(ProtocolError):
        proto.Frame(MsgType.OK, 1, b"[1]").json()


@pytest.mark.parametrize(
    ("payload", "code"),
    [({"status": 3, "signal": None}, 3), ({"status": None, "signal": 9}, 137)],
)
def test_exit_status_code(payload: dict, code: int) -> None:
    assert ExitStatus.from_payload(payload).code == code


@pytest.mark.parametrize("payload", [{"status": None, "signal": None}, {"status": "1"},
                                     {"status": 1, "signal": 2}])
def test_exit_status_rejects_bad_payloads(payload: dict) -> None:
    with pytest.raises(ProtocolError):
        ExitStatus.from_payload(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_decoder_never_crashes_on_garbage(data: bytes, chunk: int) -> None:
    """Garbage yields frames or ProtocolError: nothing else, no hang, no unbounded buffer."""
    decoder = FrameDecoder()
    try:
        for start in range(0, len(data), chunk):
            for frame in decoder.feed(data[start:start + chunk]):
                assert len(frame.payload) <= proto.MAX_PAYLOAD
                try:
                    frame.json()
                except ProtocolError:
                    pass
    except ProtocolError:
        return
    assert decoder.pending < proto.HEADER_SIZE + proto.MAX_PAYLOAD


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(MsgType)), st.integers(0, 2**32 - 1),
                          st.binary(max_size=300)), max_size=20))
def test_any_frame_sequence_roundtrips(frames: list) -> None:
    stream = b"".join(proto.encode(t, i, p) for t, i, p in frames)
    decoded = FrameDecoder().feed(stream)
    assert [(f.type, f.id, f.payload) for f in decoded] == frames


def test_encode_json_is_compact_utf8() -> None:
    frame = FrameDecoder().feed(proto.encode_json(MsgType.START, 1, {"a": "é"}))[0]
    assert json.loads(frame.payload) == {"a": "é"}


# -- a hostile guest: nothing it sends is trusted in size, shape or number ---------------------


def test_deep_nesting_is_refused_before_parsing() -> None:
    """200k ``[`` made json.loads raise RecursionError, which killed the channel's reader."""
    frame = proto.Frame(MsgType.OK, 1, b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(ProtocolError, match="nested deeper"):
        frame.json()
    with pytest.raises(ProtocolError, match="nested deeper"):
        proto.Frame(MsgType.EXIT, 1, b'{"a":' * 40 + b"1" + b"}" * 40).guest_json()
    assert proto.json_depth(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"["}') == 1


def test_guest_json_is_size_limited() -> None:
    big = b'{"message": "' + b"x" * proto.MAX_GUEST_JSON + b'"}'
    with pytest.raises(ProtocolError, match="more than the"):
        proto.Frame(MsgType.ERROR, 1, big).guest_json()


@pytest.mark.parametrize("payload", [
    {"status": 10**20, "signal": None}, {"status": -1, "signal": None},
    {"status": 256, "signal": None}, {"status": True, "signal": None},
    {"status": None, "signal": 0}, {"status": None, "signal": 65},
    {"status": None, "signal": 2**70}, {"status": 1.5, "signal": None}])
def test_exit_numbers_are_range_checked(payload: dict) -> None:
    with pytest.raises(ProtocolError, match="not an integer in"):
        ExitStatus.from_payload(payload)


def test_reply_numbers_and_text_are_checked() -> None:
    assert proto.reply_pid({"pid": 42}) == 42
    for bad in (10**20, 0, -3, "7", True):
        with pytest.raises(ProtocolError):
            proto.reply_pid({"pid": bad})
    code, message, errno = proto.error_fields({"code": "ENOENT", "message": "m\x1b[2J" * 5000,
                                               "errno": 2})
    assert (code, errno) == ("ENOENT", 2)
    assert len(message) <= proto.MAX_GUEST_TEXT + 20 and "\x1b" not in message
    for bad in ({"code": "x" * 100}, {"code": 5}, {"code": "EIO", "errno": 10**20},
                {"code": "EIO", "errno": "2"}):
        with pytest.raises(ProtocolError):
            proto.error_fields(bad)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["status", "signal", "pid", "code", "message", "errno"]),
                      children, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_guest_payload_parsers_raise_only_protocol_errors(payload: bytes) -> None:
    """Whatever a guest sends as a reply or EXIT: a valid value in range, or ProtocolError."""
    frame = proto.Frame(MsgType.EXIT, 1, payload)
    try:
        body = frame.guest_json()
    except ProtocolError:
        return
    for parse in (ExitStatus.from_payload, proto.reply_pid, proto.error_fields,
                  proto.ready_fields):
        try:
            value = parse(body)
        except ProtocolError:
            continue
        if isinstance(value, ExitStatus):
            assert (value.status is None) != (value.signal is None)
            assert 0 <= (value.status or 0) <= 255 and 0 <= (value.signal or 0) <= 64
        elif isinstance(value, int):
            assert 0 <= value <= proto.MAX_PID
