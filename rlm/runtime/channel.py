"""The channel codec: length-prefixed frames, and the messages made of them.

Shared by both ends of every byte stream rlm speaks, so each rule lives once:
- the LMHandler's TCP protocol (`rlm.runtime.protocol`): every frame is one JSON object;
- the sandbox channel between the host (`rlm.environments.isolated`) and the worker
  (`rlm.runtime.worker`, over its stdin/stdout): JSON frames, plus binary frames that carry
  bulk text, optionally as base64 lines for transports that only carry text.

A frame is a 4-byte big-endian header and a body. On TCP the header is the body length. On the
sandbox channel the low 30 bits are the length and the top two are flags: bit 31 clear, the
body is one JSON object (exactly a TCP frame); bit 31 set, the body is raw bytes of a blob,
continued in the next frame while bit 30 is set. The declared length is checked against the
cap before any body byte is buffered, bodies are strict UTF-8 (``json.loads(bytes)`` would guess
UTF-16/32) and strict JSON (NaN/Infinity refused; deep nesting, over-long integers and more
values than `MAX_JSON_VALUES` are a `ProtocolError`).

Long strings in a message (a huge final value, a long answer) travel as blobs of UTF-8 ahead
of the message, which lists in "$blobs" the paths where they go: bulk text is never
JSON-escaped. A message whose JSON is still over the cap travels as a blob of its JSON text
followed by {"type": "$json"}; {"type": "$abort"} discards a message its sender could not
finish. Host code imports this module, never the worker (the sandbox program).

Standard library only (plus `rlm.errors` and `rlm.runtime.jsondata`): shipped into sandboxes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from rlm.errors import FrameTooLargeError, ProtocolError

from .jsondata import check_json_cost, json_bytes, strict_loads

MAX_FRAME_BYTES = 64 * 2**20
HEADER = struct.Struct(">I")
_HEADER_MAX = 2**32 - 1

CHANNEL_VERSION = 1  # of the sandbox channel's hello
TOKEN_ENV = "RLM_CHANNEL_TOKEN"  # the worker's channel token travels here, never in argv
ENCODING_ENV = "RLM_CHANNEL_ENCODING"  # "base64": one base64 line per frame
REQUEST_TYPES = frozenset({"llm", "llm_batch", "rlm", "rlm_batch", "tool", "ping"})

BLOB_MIN_CHARS = 1 << 16  # strings at least this long travel as blobs
CHUNK_CHARS = 4 * 2**20  # characters per blob frame (<= 16 MB of UTF-8)
_BLOB_DEPTH = 4  # how deep into a message long strings are looked for
_BINARY = 0x80000000
_MORE = 0x40000000
_LENGTH = 0x3FFFFFFF


# ------------------------------------------------------------------------------ frames
def check_cap(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise FrameTooLargeError(f"frame of {length} bytes is over the cap of {max_frame_bytes}")


def encode_frame(obj: dict[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Header + JSON body of one message; refuses anything the peer would have to reject."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a frame must hold a JSON object, not {type(obj).__name__}")
    try:
        data = json_bytes(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not encodable as JSON: {exc}") from exc
    check_cap(len(data), min(max_frame_bytes, _HEADER_MAX))
    return HEADER.pack(len(data)) + data


def _as_object(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must hold a JSON object, not {type(obj).__name__}")
    return obj


def decode_json_text(text: str, what: str = "message") -> dict[str, Any]:
    """Strict JSON object from text, its cost bounded before it is parsed."""
    check_json_cost(text)
    return _as_object(strict_loads(text, what), what)


def decode_payload(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse one frame body: its cost bounded, strict UTF-8, a strict JSON object."""
    raw = bytes(data)
    check_json_cost(raw)  # before decoding: a refused body costs no text copy
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not valid UTF-8 (byte {exc.start})") from None
    del raw
    return _as_object(strict_loads(text, "frame"), "frame")


ABORT_FRAME = encode_frame({"type": "$abort"})


class Chunk:
    """A binary frame's body; `more` means the blob continues in the next frame."""

    __slots__ = ("data", "more")

    def __init__(self, data: bytes, more: bool) -> None:
        self.data = data
        self.more = more


class ChannelDecoder:
    """The incremental frame decoder: feed it bytes as they arrive, get back whole frames.

    With `chunks` (the sandbox channel) a header's top bits are flags and binary frames come
    back as `Chunk`s; without (TCP, `FrameDecoder`) the whole header is the length, so a
    flagged header is just a length over the cap. The buffer never holds more than one header
    or one frame body (at most the cap). After an error the stream is out of sync, so every
    later `feed` raises too.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES, *, chunks: bool = True) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._mask = _LENGTH if chunks else _HEADER_MAX
        self._buf = bytearray()
        self._need: int | None = None  # body length once the header has been read
        self._flags = 0
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet delivered (a partial header or body)."""
        return len(self._buf) + (HEADER.size if self._need is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> Sequence[dict[str, Any] | Chunk]:
        if self._error is not None:
            raise ProtocolError(f"decoder stopped after an earlier error: {self._error}")
        try:
            return self._feed(memoryview(data).cast("B"))
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            self._need = None
            raise

    def _feed(self, view: memoryview) -> list[dict[str, Any] | Chunk]:
        out: list[dict[str, Any] | Chunk] = []
        while view:
            if self._need is None:
                take = HEADER.size - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < HEADER.size:
                    break
                (header,) = HEADER.unpack(self._buf)
                self._buf.clear()
                length, self._flags = header & self._mask, header & ~self._mask
                check_cap(length, self.max_frame_bytes)
                self._need = length
            take = self._need - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < self._need:
                break
            body = bytes(self._buf)
            self._buf.clear()
            self._need = None
            if self._flags & _BINARY:
                out.append(Chunk(body, bool(self._flags & _MORE)))
            else:
                out.append(decode_payload(body))
        return out


class FrameDecoder(ChannelDecoder):
    """`ChannelDecoder` for the TCP protocol: every frame is one JSON object."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        super().__init__(max_frame_bytes, chunks=False)

    def feed(self, data: bytes | bytearray | memoryview) -> Sequence[dict[str, Any]]:
        return cast("Sequence[dict[str, Any]]", super().feed(data))


# ---------------------------------------------------------------------------- messages
def _extract_blobs(
    value: Any, path: list[Any], blobs: list[tuple[list[Any], str]], depth: int
) -> Any:
    """A copy of `value` with long strings replaced by None and recorded in `blobs`."""
    if isinstance(value, str) and len(value) >= BLOB_MIN_CHARS:
        blobs.append((path, value))
        return None
    if depth < _BLOB_DEPTH and isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"message has a non-str key {key!r}")
            out[key] = _extract_blobs(item, [*path, key], blobs, depth + 1)
        return out
    if depth < _BLOB_DEPTH and isinstance(value, (list, tuple)):
        return [_extract_blobs(item, [*path, i], blobs, depth + 1) for i, item in enumerate(value)]
    return value


def _json_pieces(value: Any, depth: int = 0) -> Iterator[str]:
    """JSON text of `value` in pieces (containers near the top split up)."""
    if depth < 3 and isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + json.dumps(key, ensure_ascii=False) + ":"
            yield from _json_pieces(item, depth + 1)
        yield "}"
    elif depth < 3 and isinstance(value, (list, tuple)):
        yield "["
        for i, item in enumerate(value):
            yield "," if i else ""
            yield from _json_pieces(item, depth + 1)
        yield "]"
    else:
        try:
            yield json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"message is not encodable as JSON: {exc}") from exc


def _blob_frames(text: str, max_frame_bytes: int) -> Iterator[bytes]:
    """`text` as binary frames of UTF-8 (lone surrogates pass through)."""
    n = len(text)
    step = max(1, min(CHUNK_CHARS, max_frame_bytes // 4))
    for i in range(0, n, step) or range(1):
        chunk = text[i : i + step].encode("utf-8", "surrogatepass")
        flags = _BINARY | (_MORE if i + step < n else 0)
        yield HEADER.pack(len(chunk) | flags) + chunk


def iter_message_frames(
    obj: dict[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES
) -> Iterator[bytes]:
    """The frames of one message, made lazily so memory stays near one frame."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a dict, not {type(obj).__name__}")
    blobs: list[tuple[list[Any], str]] = []
    skeleton = _extract_blobs(obj, [], blobs, 0)
    if blobs:
        skeleton["$blobs"] = [path for path, _ in blobs]
    for _, text in blobs:
        yield from _blob_frames(text, max_frame_bytes)
    try:
        yield encode_frame(skeleton, max_frame_bytes)
    except FrameTooLargeError:
        yield from _blob_frames("".join(_json_pieces(skeleton)), max_frame_bytes)
        yield encode_frame({"type": "$json"}, max_frame_bytes)


def message_frames(obj: dict[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES) -> list[bytes]:
    return list(iter_message_frames(obj, max_frame_bytes))


def send_message(
    write: Callable[[bytes], Any], message: dict[str, Any], *, base64_lines: bool = False
) -> None:
    """Write one message's frames as they are made. A failure midway (the message cannot be
    encoded, memory runs out) ends it with an abort frame, so the stream stays in sync, and
    is raised; the caller serialises writers."""
    sent = False
    try:
        for frame in iter_message_frames(message):
            write(encode_line(frame) if base64_lines else frame)
            sent = True
    except (ProtocolError, MemoryError, ValueError, TypeError, RecursionError):
        if sent:
            write(encode_line(ABORT_FRAME) if base64_lines else ABORT_FRAME)
        raise


def _place(root: dict[str, Any], path: Any, value: str) -> None:
    if not isinstance(path, list) or not path:
        raise ProtocolError("a blob path must be a non-empty list")
    target: Any = root
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(target, dict) and isinstance(key, str):
            if last:
                target[key] = value
            else:
                target = target.get(key)
        elif (
            isinstance(target, list)
            and isinstance(key, int)
            and not isinstance(key, bool)
            and 0 <= key < len(target)
        ):
            if last:
                target[key] = value
            else:
                target = target[key]
        else:
            raise ProtocolError(f"a blob path does not fit the message: {path!r}")


class MessageAssembler:
    """Turns decoded frames back into messages; `max_bytes` bounds one message's blobs."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._reset()

    def _reset(self) -> None:
        self._blobs: list[str] = []
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, item: dict[str, Any] | Chunk) -> dict[str, Any] | None:
        if isinstance(item, Chunk):
            self._size += len(item.data)
            if self.max_bytes is not None and self._size > self.max_bytes:
                raise ProtocolError(f"a message is over the cap of {self.max_bytes} bytes")
            self._chunks.append(item.data)
            if not item.more:
                try:
                    text = b"".join(self._chunks).decode("utf-8", "surrogatepass")
                except UnicodeDecodeError as exc:
                    raise ProtocolError(f"a blob is not valid UTF-8: {exc}") from None
                self._chunks = []
                self._blobs.append(text)
            return None
        if self._chunks:
            raise ProtocolError("a message interrupted a blob")
        kind = item.get("type")
        if kind == "$abort":
            self._reset()
            return None
        if kind == "$json":
            if not self._blobs:
                raise ProtocolError("a $json marker without its text")
            item = decode_json_text(self._blobs.pop())
        paths = item.pop("$blobs", None)
        blobs = self._blobs
        self._reset()
        if paths is None and not blobs:
            return item
        if not isinstance(paths, list) or len(paths) != len(blobs):
            raise ProtocolError("a message's blobs do not match its $blobs paths")
        for path, blob in zip(paths, blobs, strict=True):
            _place(item, path, blob)
        return item


# ------------------------------------------------------------------------ base64 lines
class LineDecoder:
    """Decodes a base64-lines transport back into the raw frame bytes."""

    def __init__(self, max_line: int = 2 * MAX_FRAME_BYTES) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        end = self._buf.rfind(b"\n")
        if end < 0:
            if len(self._buf) > self.max_line:
                raise ProtocolError("a base64 line is over the cap")
            return b""
        lines, self._buf = bytes(self._buf[:end]), self._buf[end + 1 :]
        try:
            return b"".join(
                base64.b64decode(line, validate=True) for line in lines.split(b"\n") if line
            )
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"a line of the channel is not base64: {exc}") from None


def encode_line(data: bytes) -> bytes:
    return base64.b64encode(data) + b"\n"


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a (blocking) descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
