"""Fuzzing a live LMHandler: more than 10,000 hostile inputs while an honest client keeps working.

The inputs are generated from a fixed seed (so a failure reproduces) and cover the protocol's
attack surface (docs/protocol.md, security checklist P1-P9): random bytes, truncated frames,
declared lengths over the cap, invalid UTF-8, NaN, deeply nested JSON, over-long integers,
non-object payloads, wrong field types, unknown request types, bad ids, requests without a
hello, wrong or missing tokens, resets in the middle of a request, and slow-loris senders.

Most hostile *requests* are well-formed frames, which the server answers with a typed error
and keeps the connection open, so thousands of them are pipelined over a few connections.
Hostile *frames* close the connection, so each of those gets a fresh one. Throughout, an honest
client on its own connection must keep getting correct answers, the server must keep accepting
connections, unparseable input must never cost more memory than the bytes actually sent, and
no connection may hold the server longer than its read deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlm import errors
from rlm.aio import run_sync
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler, Session
from rlm.core.types import LMResponse, Message, Usage
from rlm.runtime.protocol import HEADER, MAX_FRAME_BYTES, Connection, FrameDecoder
from rlm.transport.tcp import HELLO_MAX_BYTES

pytestmark = pytest.mark.timeout(240)

SEED = 20_261_121
MIN_INPUTS = 10_000
DEADLINE = 1.0  # the handler's hello and frame deadlines in this test (defaults: 10 s, 30 s)
BATCH = 250  # pipelined requests per write; their answers fit the socket buffers
ERROR_TYPES = {
    name for name, value in vars(errors).items() if isinstance(value, type) and name[0].isupper()
} | {"TypeError", "ValueError", "CancellationError"}


class QuickLM(BaseLM):
    """Answers at once ("sleep:S" waits S seconds first); content may be any JSON value."""

    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        text = str(messages[-1].get("content"))
        if text.startswith("sleep:"):
            await asyncio.sleep(float(text[6:]))
        return LMResponse(f"ok:{text[:40]}", self.model_name, Usage(1, 1))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def jframe(obj: Any) -> bytes:
    return frame(json.dumps(obj).encode())


# ------------------------------------------------------------------------------ generators


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**70), 2**70)
    if kind == 3:
        return rng.uniform(-1e300, 1e300)
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.choice(["", "llm", "ping", "\u0000", "\ud800", "x" * 500, "🙂"])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["type", "id", "prompt", "prompts", "model", "sampling", "name", "args", "kwargs"]
    return {rng.choice([*keys, "k"]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def not_a_prompt(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            7,
            1.5,
            True,
            {"role": "user", "content": "x"},
            [{"role": 1, "content": "x"}],
            [{"content": "no role"}],
            ["a", "b"],
            [[]],
            random_json(rng),
        ]
    )


def hostile_request(rng: random.Random, request_id: int) -> dict[str, Any]:
    """A well-formed frame carrying a request the server must refuse (or answer) one by one."""
    kind = rng.randrange(14)
    if kind == 0:  # unknown request types
        unknown = rng.choice(["LLM", "exec", "shutdown", "hello", "", "\u0000", "x" * 300, 7, []])
        return {"type": unknown, "id": request_id}
    if kind == 1:
        return {"type": "llm", "id": request_id, "prompt": not_a_prompt(rng)}
    if kind == 2:
        return {"type": "llm_batch", "id": request_id, "prompts": rng.choice([None, "x", 3, {}])}
    if kind == 3:
        return {"type": "llm", "id": request_id, "prompt": "p", "model": random_json(rng) or 0}
    if kind == 4:  # sampling a sandbox may not set, or not an object
        sampling = rng.choice(
            [{"base_url": "http://evil"}, {"api_key": "x"}, {"model": "m"}, [], "hot", 3]
        )
        return {"type": "llm", "id": request_id, "prompt": "p", "sampling": sampling}
    if kind == 5:
        return {
            "type": "tool",
            "id": request_id,
            "name": rng.choice([None, 3, "no_such_tool", "__import__", []]),
            "args": random_json(rng),
            "kwargs": random_json(rng),
        }
    if kind == 6:
        return {"type": "rlm_batch", "id": request_id, "prompts": ["a", "b"], "contexts": ["c"]}
    if kind == 7:
        return {"type": "rlm", "id": request_id, "prompt": not_a_prompt(rng)}
    if kind == 8:  # ids that are not a string or an integer
        return {"type": "ping", "id": rng.choice([1.5, True, False, [1], {"a": 1}])}
    if kind == 9:  # a replayed hello, with or without a token
        return {"type": "hello", "id": request_id, "token": "x" * 43, "version": 1}
    if kind == 10:  # an attempt to change the host-owned depth or routing
        return {"type": "llm", "id": request_id, "prompt": "d", "depth": -5, "max_depth": 99}
    if kind == 11:
        return {"type": "llm_batch", "id": request_id, "prompts": [not_a_prompt(rng), "ok"]}
    if kind == 12:  # a reference-style untyped request with junk
        return {"id": request_id, "prompts": random_json(rng)}
    obj = random_json(rng)
    message = obj if isinstance(obj, dict) else {"junk": obj}
    message["id"] = request_id
    return message


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def hostile_frame(rng: random.Random) -> tuple[bool, bytes, bool]:
    """(authenticate first, bytes to send, half-close after sending) for one fresh connection.

    Every one of these must end with the server closing the connection.
    """
    kind = rng.randrange(16)
    if kind == 0:  # random bytes instead of a hello
        return False, rng.randbytes(rng.randrange(1, 64)), True
    if kind == 1:  # a hello declared longer than the pre-authentication cap
        return False, HEADER.pack(rng.randint(HELLO_MAX_BYTES + 1, 2**32 - 1)), False
    if kind == 2:  # a request without a hello
        return False, jframe({"type": "llm", "id": 1, "prompt": "free call?"}), False
    if kind == 3:  # wrong, empty, non-string or wrong-version tokens
        token = rng.choice(["x" * 43, "", None, 12345, ["t"], "\ud800" * 3])
        return False, jframe({"type": "hello", "token": token, "version": 1}), False
    if kind == 4:
        return False, jframe({"type": "hello", "token": "x" * 43, "version": "1"}), False
    if kind == 5:  # truncated frames, before or after the hello
        body = json.dumps({"type": "llm", "id": 1, "prompt": "p" * 50}).encode()
        cut = rng.randrange(1, len(body))
        return bool(rng.getrandbits(1)), HEADER.pack(len(body)) + body[:cut], True
    if kind == 6:  # a header cut short
        return True, HEADER.pack(50)[: rng.randrange(1, 4)], True
    if kind == 7:  # lengths over the cap
        length = rng.choice([MAX_FRAME_BYTES + 1, 2**31, 2**32 - 1, 0x80000000 | 17])
        return True, HEADER.pack(length), False
    if kind == 8:  # invalid UTF-8
        body = b'{"type": "llm", "prompt": "' + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])
        return True, frame(body + b'"}'), False
    if kind == 9:  # NaN / Infinity, which Python's json accepts by default
        constant = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
        return True, frame(b'{"type": "llm", "prompt": "p", "x": ' + constant + b"}"), False
    if kind == 10:  # deeply nested JSON
        return (
            True,
            frame(b'{"type": "llm", "x": ' + _deep(rng.randint(50_000, 200_000)) + b"}"),
            False,
        )
    if kind == 11:  # an integer over Python's digit limit
        return True, frame(b'{"type": "llm", "id": ' + b"9" * 5000 + b"}"), False
    if kind == 12:  # a valid JSON payload that is not an object (the empty frame included)
        body = rng.choice([b"[]", b'"llm"', b"42", b"null", b""])
        return True, frame(body), False
    if kind == 13:  # invalid JSON
        return True, frame(rng.choice([b"{", b"{'a': 1}", b'{"a": }', b"\x00" * 8])), False
    if kind == 14:  # random bytes after the hello
        return True, rng.randbytes(rng.randrange(4, 200)), True
    # UTF-16 JSON (json.loads(bytes) would guess the encoding; the protocol is strict UTF-8)
    return True, frame(json.dumps({"type": "ping", "id": 1}).encode("utf-16")), False


# ------------------------------------------------------------------------------ plumbing


def open_socket(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def hello(sock: socket.socket, token: str) -> None:
    sock.sendall(jframe({"type": "hello", "token": token, "version": 1}))
    decoder = FrameDecoder(HELLO_MAX_BYTES)
    while True:
        data = sock.recv(4096)
        assert data, "the server closed the connection during an honest hello"
        replies = decoder.feed(data)
        if replies:
            assert replies[0].get("ok") is True, replies
            return


def read_frames(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    decoder = FrameDecoder()
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        data = sock.recv(1 << 20)
        assert data, f"the server closed a connection after {len(frames)} of {count} replies"
        frames.extend(decoder.feed(data))
    assert len(frames) == count
    return frames


def read_until_closed(sock: socket.socket) -> list[dict[str, Any]]:
    """What the server sent before closing; fails (socket timeout) if it never closes."""
    decoder = FrameDecoder()
    frames: list[dict[str, Any]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            return frames
        if not data:
            return frames
        frames.extend(decoder.feed(data))


def check_reply(reply: dict[str, Any], sent: dict[str, Any]) -> None:
    request_id = sent.get("id")
    valid_id = isinstance(request_id, (str, int)) and not isinstance(request_id, bool)
    assert reply.get("id") == (request_id if valid_id else None), (reply, sent)
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        error = reply["error"]
        assert set(error) == {"type", "message"}, reply
        assert error["type"] in ERROR_TYPES, reply
        assert isinstance(error["message"], str)


class HonestClient(threading.Thread):
    """Keeps asking on its own connection; records every answer's latency and any failure."""

    def __init__(self, address: tuple[str, int], token: str) -> None:
        super().__init__(name="honest-client", daemon=True)
        self.address = address
        self.token = token
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with Connection.connect(*self.address, self.token, timeout=30) as conn:
                i = 0
                while not self.stop.is_set():
                    started = time.monotonic()
                    result = conn.request({"type": "llm", "prompt": f"honest {i}"}, timeout=30)
                    if result.get("text") != f"ok:honest {i}":
                        self.failures.append(f"wrong answer {result!r}")
                    self.latencies.append(time.monotonic() - started)
                    i += 1
        except Exception as exc:
            self.failures.append(repr(exc))


def slow_loris(
    address: tuple[str, int], token: str | None, payload: bytes, dribble: bool
) -> tuple[int, str]:
    """Send `payload` (one byte per 50 ms when dribbling), then wait for the server to hang up.
    Returns how many bytes of the payload went out and the error messages the server sent
    before closing ("never closed": it kept the connection 30 s)."""
    with open_socket(address) as sock:
        if token is not None:
            hello(sock, token)
        sent = 0
        try:
            for chunk in (
                (payload[i : i + 1] for i in range(len(payload))) if dribble else [payload]
            ):
                sock.sendall(chunk)
                sent += len(chunk)
                if dribble:
                    time.sleep(0.05)  # the sender's pace, not a wait for the server
            sock.settimeout(30)
            frames = read_until_closed(sock)
        except TimeoutError:
            return sent, "never closed"
        except OSError:  # reset by the server while sending
            return sent, ""
    return sent, " | ".join(str(f["error"]["message"]) for f in frames if "error" in f)


async def _task_count() -> int:
    return len(asyncio.all_tasks())


@pytest.fixture
def handler() -> Iterator[LMHandler]:
    lm_handler = LMHandler(
        QuickLM("fuzz", max_retries=0), frame_timeout=DEADLINE, hello_timeout=DEADLINE
    )
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ the test


def run_request_streams(
    address: tuple[str, int], session: Session, rng: random.Random, total: int
) -> int:
    """Pipelined hostile requests over a mix of connections; returns how many were sent."""
    sent_total = 0
    request_id = 0
    while sent_total < total:
        with open_socket(address) as sock:
            hello(sock, session.token)
            for _ in range(rng.randint(1, 4)):  # a few batches per connection
                batch = []
                for _ in range(BATCH):
                    request_id += 1
                    batch.append(hostile_request(rng, request_id))
                sock.sendall(b"".join(jframe(m) for m in batch))
                replies = read_frames(sock, len(batch))
                by_id: dict[Any, list[dict[str, Any]]] = {}
                for reply in replies:
                    by_id.setdefault(reply.get("id"), []).append(reply)
                for message in batch:
                    key = message.get("id")
                    valid = isinstance(key, (str, int)) and not isinstance(key, bool)
                    check_reply(by_id[key if valid else None].pop(), message)
                sent_total += len(batch)
    return sent_total


def run_fresh_connections(
    address: tuple[str, int], session: Session, rng: random.Random, total: int
) -> int:
    """Hostile frames, each on its own connection, which the server must close."""
    for _ in range(total):
        authenticate, data, half_close = hostile_frame(rng)
        with open_socket(address) as sock:
            if authenticate:
                hello(sock, session.token)
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:  # the server already refused and closed
                continue
            frames = read_until_closed(sock)
        for reply in frames:
            assert reply.get("id") is None and reply["error"]["type"] in ERROR_TYPES, reply
    return total


def run_resets(address: tuple[str, int], session: Session, count: int) -> int:
    """Requests whose client vanishes (TCP RST) while the LM call is in flight."""
    for i in range(count):
        with open_socket(address) as sock:
            hello(sock, session.token)
            sock.sendall(jframe({"type": "llm", "id": i, "prompt": "sleep:0.05"}))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return count


def test_ten_thousand_hostile_inputs_while_an_honest_client_is_served(
    handler: LMHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rlm")
    assert handler.address is not None
    address = handler.address
    session = handler.open_session()
    rng = random.Random(SEED)
    tasks_before = run_sync(_task_count())

    honest = HonestClient(address, session.token)
    honest.start()
    wait_for(lambda: len(honest.latencies) >= 5, 30, "the honest client's first answers")

    # Slow-loris connections, before and after the hello, run alongside everything else.
    loris_results: dict[int, tuple[int, str]] = {}
    loris_payloads: list[tuple[str | None, bytes, bool]] = [
        (None, b"", False),  # connect and say nothing
        (None, jframe({"type": "hello", "token": session.token, "version": 1}), True),
        (session.token, HEADER.pack(100), False),  # a header, then silence
        (session.token, jframe({"type": "llm", "prompt": "p" * 200, "id": 1}), True),
    ] * 3
    loris_threads = [
        threading.Thread(
            target=lambda i=i, t=token, p=payload, d=dribble: loris_results.__setitem__(
                i, slow_loris(address, t, p, d)
            ),
            daemon=True,
        )
        for i, (token, payload, dribble) in enumerate(loris_payloads)
    ]
    for thread in loris_threads:
        thread.start()

    # Warm-up, so the memory baseline includes the server's steady state.
    count = run_request_streams(address, session, rng, BATCH)
    count += run_fresh_connections(address, session, rng, 100)
    baseline = rss_bytes()

    count += run_request_streams(address, session, rng, 8_500)
    count += run_fresh_connections(address, session, rng, 1_500)
    count += run_resets(address, session, 50)
    count += len(loris_payloads)

    # Unparseable input costs the bytes sent, never the declared length: frames announcing
    # 48 MiB each are held open (1 MiB sent) while the memory is measured.
    holders = []
    for _ in range(8):
        sock = open_socket(address)
        hello(sock, session.token)
        sock.sendall(HEADER.pack(48 * 2**20) + b"x" * 2**20)
        holders.append(sock)
    held = 0
    for _ in range(10):  # the peak while they are held (a preallocating reader would show)
        held = max(held, rss_bytes())
        time.sleep(0.05)
    for sock in holders:
        sock.close()
    count += len(holders)

    for thread in loris_threads:
        thread.join(timeout=60)
    honest.stop.set()
    honest.join(timeout=60)

    print(
        f"\n[fuzz] {count} hostile inputs; honest answers {len(honest.latencies)} "
        f"(max {max(honest.latencies) * 1000:.0f} ms); RSS +{(held - baseline) / 2**20:.1f} MiB"
    )
    assert count >= MIN_INPUTS
    # The honest client was answered all along, and promptly.
    assert not honest.failures, honest.failures
    assert not honest.is_alive()
    assert len(honest.latencies) >= 50, len(honest.latencies)
    assert max(honest.latencies) < 10.0, max(honest.latencies)  # a hang guard (timeout 30 s)
    # Every slow sender was cut off by this handler's 1 s deadline (not the 10 s and 30 s
    # defaults): before its payload was through, or told so when it had nothing left to send.
    assert sorted(loris_results) == list(range(len(loris_payloads)))
    for i, (_, payload, _) in enumerate(loris_payloads):
        sent, said = loris_results[i]
        assert sent < len(payload) or f"within {DEADLINE}s" in said, (payload[:40], sent, said)
    # Memory stayed bounded: well under what the declared lengths would have cost.
    growth = held - baseline
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    # The server is alive, holds no hostile connection and no leftover task.
    wait_for(lambda: handler.open_connections == 0, 30, "hostile connections to close")
    wait_for(lambda: run_sync(_task_count()) <= tasks_before, 30, "request tasks to finish")
    with Connection.connect(*address, session.token, timeout=30) as conn:
        assert conn.request({"type": "llm", "prompt": "after"}, timeout=30)["text"] == "ok:after"
    # No input reached an unexpected code path (those log at ERROR).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
