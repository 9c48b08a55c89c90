"""The wire format: frames, the incremental decoder, the blocking and async readers, Connection."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm.errors import (
    AuthenticationError,
    FrameTooLargeError,
    IncompleteFrameError,
    ProtocolError,
    RemoteError,
)
from rlm.runtime.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    Connection,
    FrameDecoder,
    decode_payload,
    encode_frame,
    read_frame,
    recv_frame,
    send_frame,
)

pytestmark = pytest.mark.timeout(30)


def raw_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


# -- encode / decode ---------------------------------------------------------------------------


def test_round_trip_keeps_unicode_and_nesting() -> None:
    message = {"id": 7, "prompt": "héllo ✓ 😀", "nested": {"a": [1, 2.5, None, True]}}
    frame = encode_frame(message)
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    assert "😀".encode() in frame  # sent as UTF-8, not \\u escapes
    assert decode_payload(frame[4:]) == message


def test_lone_surrogates_are_sent_as_escapes() -> None:
    message = {"text": "bad \ud800 half"}
    assert decode_payload(encode_frame(message)[4:]) == message


@pytest.mark.parametrize("obj", [[1, 2], "text", 3, None])
def test_encode_refuses_non_objects(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        encode_frame(obj)


@pytest.mark.parametrize("obj", [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}])
def test_encode_refuses_what_the_peer_must_reject(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        encode_frame(obj)


def test_encode_refuses_over_the_cap() -> None:
    with pytest.raises(FrameTooLargeError):
        encode_frame({"text": "x" * 100}, max_frame_bytes=50)
    assert len(encode_frame({"t": "x" * 40}, max_frame_bytes=48)) == 4 + 48


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe{}",
        '{"a": "é"}'.encode("utf-16"),
        b'{"a": 1',
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"n": ' + b"9" * 5000 + b"}",
        b"[1, 2]",
        b'"text"',
        b"null",
    ],
    ids=[
        "empty",
        "bad-utf8",
        "utf16",
        "truncated-json",
        "nan",
        "infinity",
        "deep-list",
        "deep-object",
        "5000-digit-int",
        "top-level-list",
        "top-level-string",
        "top-level-null",
    ],
)
def test_decode_rejects_with_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(body)


# -- FrameDecoder ------------------------------------------------------------------------------

MESSAGES: list[dict[str, Any]] = [
    {"id": 1, "type": "llm", "prompt": "a"},
    {"id": "two", "x": [1, {"y": "ü"}]},
    {},
]
STREAM = b"".join(encode_frame(m) for m in MESSAGES)


def test_decoder_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    delivered: list[dict[str, Any]] = []
    for i in range(len(STREAM)):
        delivered += decoder.feed(STREAM[i : i + 1])
    assert delivered == MESSAGES
    assert decoder.pending == 0


@pytest.mark.parametrize("split", [1, 3])
def test_decoder_header_split(split: int) -> None:
    frame = encode_frame(MESSAGES[0])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:split]) == []
    assert decoder.pending == split
    assert decoder.feed(frame[split:]) == [MESSAGES[0]]


def test_decoder_several_frames_in_one_feed_and_a_partial_tail() -> None:
    decoder = FrameDecoder()
    tail = encode_frame({"id": 9})
    assert decoder.feed(STREAM + tail[:6]) == MESSAGES
    assert decoder.pending == 6
    assert decoder.feed(tail[6:]) == [{"id": 9}]


def test_decoder_zero_length_frame_is_not_an_object() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(HEADER.pack(0))


def test_decoder_accepts_exactly_the_cap() -> None:
    cap = 64
    body = json.dumps({"t": "x" * (cap - 9)}).encode()
    assert len(body) == cap
    assert FrameDecoder(cap).feed(raw_frame(body)) == [{"t": "x" * (cap - 9)}]


@pytest.mark.parametrize("declared", [MAX_FRAME_BYTES + 1, 0xFFFFFFFF, 0x80000000])
def test_decoder_refuses_oversize_before_buffering(declared: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError):
        decoder.feed(HEADER.pack(declared) + b"{" * 10_000)
    assert decoder.pending == 0
    with pytest.raises(ProtocolError):  # the stream is out of sync for good
        decoder.feed(encode_frame({}))


def test_decoder_buffer_is_bounded_by_the_declared_frame() -> None:
    decoder = FrameDecoder(1000)
    decoder.feed(HEADER.pack(1000) + b"x" * 999)
    assert decoder.pending == 4 + 999
    with pytest.raises(ProtocolError):  # 1000 bytes of "x" is not JSON
        decoder.feed(b"x" + b"y" * 100_000)
    assert decoder.pending == 0


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
messages = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            messages.map(lambda m: ("frame", m)),
            st.binary(max_size=40).map(lambda b: ("junk", b)),
            st.binary(max_size=40).map(lambda b: ("framed-junk", b)),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_decoder_property_random_streams(parts: list[tuple[str, Any]], cuts: list[int]) -> None:
    cap = 200
    stream = b""
    expected: list[dict[str, Any]] = []  # the messages of the valid prefix of the stream
    valid_prefix = True
    for kind, value in parts:
        if kind == "frame":
            try:
                frame = encode_frame(value, cap)
            except FrameTooLargeError:
                continue
            stream += frame
            if valid_prefix:
                expected.append(value)
        else:
            stream += raw_frame(value) if kind == "framed-junk" else value
            valid_prefix = False
    decoder = FrameDecoder(cap)
    delivered: list[dict[str, Any]] = []
    failed = False
    for chunk in _chunks(stream, cuts):
        try:
            delivered += decoder.feed(chunk)
        except ProtocolError:
            failed = True
            break
        assert decoder.pending <= cap + 4
    assert all(isinstance(m, dict) for m in delivered)
    # Whole frames only, in order: what was delivered is a prefix of the encoded messages
    # until the first junk, and junk may at most decode into extra whole objects after it.
    assert delivered[: len(expected)] == expected[: len(delivered)]
    if valid_prefix:
        assert not failed
        assert delivered == expected
        assert decoder.pending == 0


# -- blocking helpers ---------------------------------------------------------------------------


def test_send_and_recv_frame_over_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        for message in MESSAGES:
            send_frame(a, message)
        assert [recv_frame(b) for _ in MESSAGES] == MESSAGES
        a.shutdown(socket.SHUT_WR)
        assert recv_frame(b) is None  # clean EOF at a frame boundary


@pytest.mark.parametrize(
    ("data", "expected", "received"),
    [(b"\x00\x00", 4, 2), (HEADER.pack(10) + b'{"a"', 10, 4)],
    ids=["mid-header", "mid-body"],
)
def test_recv_frame_eof_mid_frame(data: bytes, expected: int, received: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(IncompleteFrameError) as info:
            recv_frame(b)
        assert (info.value.expected, info.value.received) == (expected, received)


def test_recv_frame_refuses_oversize_header() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(HEADER.pack(0xFFFFFFFF))
        with pytest.raises(FrameTooLargeError):
            recv_frame(b, 1024)


# -- async reader --------------------------------------------------------------------------------


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_read_frame_frames_then_clean_eof() -> None:
    async def main() -> list[Any]:
        reader = _reader(STREAM)
        return [await read_frame(reader, frame_timeout=1) for _ in range(len(MESSAGES) + 1)]

    assert asyncio.run(main()) == [*MESSAGES, None]


async def _read(data: bytes, eof: bool = True, cap: int = MAX_FRAME_BYTES) -> Any:
    return await read_frame(_reader(data, eof), cap, frame_timeout=1)


@pytest.mark.parametrize("data", [b"\x00", HEADER.pack(10) + b"{}"], ids=["header", "body"])
def test_read_frame_eof_mid_frame(data: bytes) -> None:
    with pytest.raises(IncompleteFrameError):
        asyncio.run(_read(data))


def test_read_frame_oversize_and_bad_payload() -> None:
    with pytest.raises(FrameTooLargeError):
        asyncio.run(_read(HEADER.pack(2000), eof=False, cap=1000))
    with pytest.raises(ProtocolError):
        asyncio.run(_read(raw_frame(b'{"a": NaN}')))


def test_read_frame_waits_for_a_frame_but_not_for_a_stalled_one() -> None:
    async def idle() -> None:
        # No byte yet: the reader waits past the frame timeout (only the caller stops it).
        reader = _reader(b"", eof=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_frame(reader, frame_timeout=0.05), 0.3)

    async def stalled() -> None:
        reader = _reader(HEADER.pack(100) + b"{", eof=False)
        with pytest.raises(ProtocolError, match="within"):  # wait_for: a hang guard only
            await asyncio.wait_for(read_frame(reader, frame_timeout=0.2), 20)

    async def trickle() -> None:
        # One deadline for the whole frame: a byte every 50 ms cannot keep it alive.
        reader = asyncio.StreamReader()
        frame = encode_frame({"x": "y" * 50})

        async def feed() -> None:
            for i in range(len(frame)):
                reader.feed_data(frame[i : i + 1])
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(feed())
        with pytest.raises(ProtocolError, match="within"):
            await read_frame(reader, frame_timeout=0.5)
        feeder.cancel()

    asyncio.run(idle())
    asyncio.run(stalled())
    asyncio.run(trickle())


# -- Connection ----------------------------------------------------------------------------------


def _serve(sock: socket.socket, handler: Callable[[socket.socket], None]) -> threading.Thread:
    def run() -> None:
        with sock:
            handler(sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _accept_hello(sock: socket.socket, depth: int = 2) -> dict[str, Any]:
    hello = recv_frame(sock)
    assert hello is not None
    send_frame(sock, {"type": "hello", "ok": True, "version": 1, "depth": depth})
    return hello


def test_connection_hello_and_out_of_order_responses() -> None:
    client_sock, server_sock = socket.socketpair()
    seen: dict[str, Any] = {}

    def server(sock: socket.socket) -> None:
        seen["hello"] = _accept_hello(sock)
        first, second, third = (recv_frame(sock) for _ in range(3))
        assert first and second and third
        send_frame(sock, {"id": third["id"], "error": {"type": "ProviderError", "message": "no"}})
        send_frame(sock, {"id": second["id"], "result": {"n": 2}})
        send_frame(sock, {"id": first["id"], "result": {"n": 1}})
        recv_frame(sock)  # until the client closes

    thread = _serve(server_sock, server)
    conn = Connection(client_sock, "s3cret-token")
    try:
        assert conn.depth == 2
        futures = [conn.submit({"type": "ping", "n": i}) for i in range(3)]
        assert futures[0].result(5) == {"n": 1}
        assert futures[1].result(5) == {"n": 2}
        with pytest.raises(RemoteError) as info:
            futures[2].result(5)
        assert info.value.error_type == "ProviderError"
    finally:
        conn.close()
        conn.close()  # idempotent
    thread.join(5)
    assert seen["hello"] == {"type": "hello", "token": "s3cret-token", "version": 1}
    assert "s3cret" not in repr(conn)


def test_connection_failure_fails_pending_and_later_requests() -> None:
    client_sock, server_sock = socket.socketpair()
    got_request = threading.Event()

    def server(sock: socket.socket) -> None:
        _accept_hello(sock)
        recv_frame(sock)
        got_request.set()
        # and die without answering

    _serve(server_sock, server)
    conn = Connection(client_sock, "tok")
    try:
        pending = conn.submit({"type": "llm", "prompt": "hi"})
        with pytest.raises(ProtocolError):
            pending.result(5)
        with pytest.raises(ProtocolError):
            conn.request({"type": "ping"}, timeout=5)
        assert conn.closed
    finally:
        conn.close()


def test_connection_server_error_frame_fails_everything() -> None:
    client_sock, server_sock = socket.socketpair()

    def server(sock: socket.socket) -> None:
        _accept_hello(sock)
        recv_frame(sock)
        send_frame(sock, {"id": None, "error": {"type": "ProtocolError", "message": "bad"}})
        time.sleep(0.5)

    _serve(server_sock, server)
    with Connection(client_sock, "tok") as conn, pytest.raises(ProtocolError, match="bad"):
        conn.request({"type": "ping"}, timeout=5)


@pytest.mark.parametrize(
    "reply",
    [
        {"type": "error", "id": None, "error": {"type": "AuthenticationError", "message": "no"}},
        None,
    ],
    ids=["error-reply", "eof"],
)
def test_connection_rejected_hello_is_an_authentication_error(reply: dict[str, Any] | None) -> None:
    client_sock, server_sock = socket.socketpair()

    def server(sock: socket.socket) -> None:
        recv_frame(sock)
        if reply is not None:
            send_frame(sock, reply)

    _serve(server_sock, server)
    with pytest.raises(AuthenticationError) as info:
        Connection(client_sock, "super-secret-token-value")
    assert "super-secret" not in str(info.value)


def test_connection_concurrent_requests_from_many_threads() -> None:
    client_sock, server_sock = socket.socketpair()

    def server(sock: socket.socket) -> None:
        _accept_hello(sock)
        while (message := recv_frame(sock)) is not None:
            send_frame(sock, {"id": message["id"], "result": {"echo": message["n"]}})

    _serve(server_sock, server)
    results: dict[int, Any] = {}
    with Connection(client_sock, "tok") as conn:

        def worker(n: int) -> None:
            results[n] = conn.request({"type": "ping", "n": n}, timeout=10)["echo"]

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert results == {n: n for n in range(40)}
