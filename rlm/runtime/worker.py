"""The sandbox worker: `python3 -m rlm.runtime.worker`, the same in every isolated environment.

It holds one `Repl` (namespace, helpers, final answers) and talks to the host over ONE byte
channel, its stdin/stdout, in length-prefixed JSON frames (`rlm.runtime.protocol`):

host -> worker   hello (token, config) | load (context/history) | exec (a cell) | shutdown,
                 and responses `{"id", "result" | "error"}` to the worker's requests
worker -> host   ready | loaded | result (each reply echoes the `seq` of its request; a cell's
                 result carries the cell's seq), and LM requests: the exact LMHandler payloads
                 plus an `id`, which the host relays to its LMHandler.

The worker never connects anywhere: the host starts it and always initiates. At start it moves
the channel to private descriptors and points fd 0 at /dev/null and fds 1/2 at pipes drained
into the running cell's output, so `print`, `os.write(1, ...)`, `sys.__stdout__` or a child
process cannot write frames. Frames over the size cap travel as consecutive "part" frames.
Transports that only carry text (some cloud SDK streams) set RLM_CHANNEL_ENCODING=base64: each
message is then one base64 line.

Only the running cell's own thread is captured at the Python level (`print`, `sys.stdout`):
what other threads write there is dropped and counted, as in the local environment, so a
thread of an earlier cell never speaks in a later one. Bytes written to fds 1/2 cannot be told
apart by thread: they belong to the cell running when they arrive, and are discarded (with a
count) between cells.

Resource limits (memory, CPU time, open files, file size, processes, no core dumps) are set
here, from the hello, before any user code runs. A cell's timeout is a SIGALRM that raises
`CellTimeout` in the cell and fires again every `_ALARM_REPEAT` seconds until the cell ends
(a single alarm can be lost, e.g. in `os.fork()`'s at-fork hooks, which swallow exceptions);
code that swallows it or blocks inside C is ended by the host, which kills the whole sandbox
after its own deadline. When a cell ends, the processes it left running are killed
(`rlm.runtime.procgroup`). When the host goes away mid-cell (its end of the channel closes
without a shutdown), the worker kills its whole process group at once instead of waiting for
the cell.

Standard library only (plus `rlm.errors` and the sibling runtime modules).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import io
import json
import os
import platform
import queue
import selectors
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from rlm.errors import FrameTooLargeError, ProtocolError

from . import capture
from .procgroup import GroupReaper, become_subreaper, end_tree, lead_own_group
from .protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    PendingRequests,
    check_json_cost,
    decode_payload,
    encode_frame,
)
from .repl import CellResult, CellTimeout, Repl

CHANNEL_VERSION = 1
TOKEN_ENV = "RLM_CHANNEL_TOKEN"
ENCODING_ENV = "RLM_CHANNEL_ENCODING"
REQUEST_TYPES = frozenset({"llm", "llm_batch", "rlm", "rlm_batch", "tool", "ping"})
_READ_CHUNK = 1 << 20
_SYNC_WAIT = 0.1  # how long a cell's end waits for process-level output still in the pipes
_ALARM_REPEAT = 0.1  # past its deadline, a cell gets CellTimeout again this often
_ORPHAN_GRACE = 1.0  # after an orderly close, a cell may overrun its deadline this long

# --------------------------------------------------------------------------- messages
# The channel between host and worker (shared with rlm.environments.isolated). Frames have a
# 4-byte big-endian header: the low 30 bits are the body length, checked against the cap
# before anything is buffered. Bit 31 clear: the body is one JSON object (exactly the frames
# of rlm.runtime.protocol). Bit 31 set: the body is raw bytes of a blob, continued in the next
# frame while bit 30 is set. Long strings in a message (a huge final value, a long answer)
# travel as blobs of UTF-8 ahead of the message, which lists in "$blobs" the paths where they
# go: bulk text is never JSON-escaped. A message whose JSON is still over the cap travels as
# a blob of its JSON text followed by {"type": "$json"}; {"type": "$abort"} discards a message
# its sender could not finish.

BLOB_MIN_CHARS = 1 << 16  # strings at least this long travel as blobs
CHUNK_CHARS = 4 * 2**20  # characters per blob frame (<= 16 MB of UTF-8)
_BLOB_DEPTH = 4  # how deep into a message long strings are looked for
_BINARY = 0x80000000
_MORE = 0x40000000
_LENGTH = 0x3FFFFFFF
_HEADER = struct.Struct(">I")
ABORT_FRAME = encode_frame({"type": "$abort"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_text(text: str) -> dict[str, Any]:
    """Strict JSON object from text (NaN/Infinity, deep nesting, huge ints and more values
    than `MAX_JSON_VALUES` rejected)."""
    check_json_cost(text)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("message JSON is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a JSON object, not {type(obj).__name__}")
    return obj


class Chunk:
    """A binary frame's body; `more` means the blob continues in the next frame."""

    __slots__ = ("data", "more")

    def __init__(self, data: bytes, more: bool) -> None:
        self.data = data
        self.more = more


class ChannelDecoder:
    """Incremental frame decoder for the channel: JSON objects and binary `Chunk`s."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None
        self._flags = 0

    @property
    def pending(self) -> int:
        return len(self._buf) + (4 if self._need is not None else 0)

    def feed(self, data: bytes) -> list[dict[str, Any] | Chunk]:
        out: list[dict[str, Any] | Chunk] = []
        view = memoryview(data)
        while view:
            if self._need is None:
                take = 4 - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < 4:
                    break
                (header,) = _HEADER.unpack(self._buf)
                self._buf.clear()
                self._need, self._flags = header & _LENGTH, header & ~_LENGTH
                if self._need > self.max_frame_bytes:
                    raise FrameTooLargeError(
                        f"frame of {self._need} bytes is over the cap of {self.max_frame_bytes}"
                    )
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
        yield _HEADER.pack(len(chunk) | flags) + chunk


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
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ------------------------------------------------------------------ process-level output


class _Sink:
    """The first `cap` bytes written to one descriptor; the rest only counted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def clear(self) -> int:
        """Forget what was kept; returns how many bytes were written (kept or not)."""
        written = len(self.data) + self.dropped
        self.data, self.dropped = bytearray(), 0
        return written

    def take(self) -> tuple[str, int]:
        text = self.data.decode("utf-8", "replace")
        dropped = self.dropped
        self.data, self.dropped = bytearray(), 0
        return text, dropped


def _pending_bytes(fd: int) -> int:
    try:
        import fcntl
        import termios

        buf = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)
    except (ImportError, OSError):
        return 0


class FdCapture:
    """Points fds 1 and 2 at pipes; a thread drains them into bounded per-cell sinks.

    Catches what `sys.stdout` capture cannot: `os.write(1, ...)`, C extensions, child
    processes, threads of earlier cells. Output written between cells is dropped at the next
    cell's start, never attributed to it.
    """

    def __init__(self, cap: int) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[int, _Sink] = {}
        for target in (1, 2):
            read_end, write_end = os.pipe()
            os.dup2(write_end, target)
            os.close(write_end)
            self._sinks[read_end] = _Sink(cap)
        self._order = list(self._sinks)
        self._child = False
        self._thread = threading.Thread(target=self._drain, name="rlm-fd-capture", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        selector = selectors.DefaultSelector()
        for fd in self._sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                with self._lock:
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except OSError:
                        chunk = b""
                    if chunk:
                        self._sinks[key.fd].add(chunk)
                    else:
                        selector.unregister(key.fd)

    def after_fork_in_child(self) -> None:
        """A forked child has no drain thread: its own output goes to the parent's pipes."""
        self._lock = threading.Lock()  # the drain thread may have held it at the fork
        self._child = True

    def set_cap(self, cap: int) -> None:
        with self._lock:
            for sink in self._sinks.values():
                sink.cap = cap

    def reset(self) -> int:
        """Discard what was written since the last cell; returns how many bytes that was."""
        discarded = 0
        with self._lock:
            for sink in self._sinks.values():
                discarded += sink.clear()
        return discarded

    def collect(self) -> tuple[str, str, int]:
        """(stdout, stderr, dropped bytes) written since `reset`, once the pipes are drained."""
        if self._child:
            return "", "", 0
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        deadline = time.monotonic() + _SYNC_WAIT
        while True:
            with self._lock:
                pending = sum(_pending_bytes(fd) for fd in self._order)
                if pending == 0 or time.monotonic() > deadline:
                    (out, d1), (err, d2) = (self._sinks[fd].take() for fd in self._order)
                    return out, err, d1 + d2
            time.sleep(0.001)


# ----------------------------------------------------------------------- the channel


class FrameWriter:
    """Writes whole messages to the private channel descriptor, one message at a time."""

    def __init__(self, fd: int, *, base64_lines: bool = False) -> None:
        self.fd = fd
        self.base64_lines = base64_lines
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        """Frames are written as they are made; a failure midway ends the message with an
        abort frame, so the stream stays in sync."""
        with self._lock:
            sent = False
            try:
                for frame in iter_message_frames(message):
                    write_all(self.fd, encode_line(frame) if self.base64_lines else frame)
                    sent = True
            except (ProtocolError, MemoryError, ValueError, TypeError, RecursionError):
                if sent:
                    abort = ABORT_FRAME
                    write_all(self.fd, encode_line(abort) if self.base64_lines else abort)
                raise


class HostChannel:
    """The Repl's channel inside a sandbox: LM requests go to the host, which relays them."""

    def __init__(self, writer: FrameWriter) -> None:
        self._writer = writer
        self._pending = PendingRequests()

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        request_id, future = self._pending.open()
        if future.done():
            return future
        try:
            self._writer.send({**payload, "id": request_id})
        except ProtocolError as exc:  # this request only (not encodable)
            self._pending.discard(request_id, exc)
        except OSError as exc:
            self.fail(ProtocolError(f"the channel to the host is gone: {exc}"))
        return future

    def resolve(self, message: dict[str, Any]) -> None:
        self._pending.settle(message)

    def after_fork_in_child(self) -> None:
        """A forked child starts with no requests of its own and no lock held by another thread."""
        self._pending = PendingRequests()

    def fail(self, error: ProtocolError) -> None:
        self._pending.fail(error)


def read_messages(
    fd: int,
    on_message: Callable[[dict[str, Any]], None],
    *,
    base64_lines: bool = False,
) -> ProtocolError | None:
    """Read messages from `fd` until EOF; returns the error that stopped it, if any."""
    frames = ChannelDecoder()
    lines = LineDecoder() if base64_lines else None
    assembler = MessageAssembler()
    try:
        while True:
            data = os.read(fd, _READ_CHUNK)
            if not data:
                return None if not frames.pending else ProtocolError("channel closed mid-frame")
            if lines is not None:
                data = lines.feed(data)
            for frame in frames.feed(data):
                message = assembler.feed(frame)
                if message is not None:
                    on_message(message)
    except ProtocolError as exc:
        return exc
    except OSError as exc:
        return ProtocolError(f"reading the channel failed: {exc}")


# ------------------------------------------------------------------------ resource limits


def _count_tasks(uid: int) -> int:
    """Threads of all processes whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:  # "Uid:\treal effective saved fs"
                total += int(fields.get("Threads", "1").strip())
        except (KeyError, ValueError, IndexError):
            continue
    return total


def apply_limits(config: dict[str, Any]) -> dict[str, Any]:
    """Lower this process's rlimits as configured; returns what was applied (for the host)."""
    import resource

    applied: dict[str, Any] = {}

    def lower(which: int, soft: int, hard: int | None = None) -> int:
        _, cur_hard = resource.getrlimit(which)
        hard = soft if hard is None else hard
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
        return soft

    def wanted(key: str) -> int | None:
        value = config.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None

    applied["core"] = lower(resource.RLIMIT_CORE, 0)
    if (memory := wanted("memory_bytes")) is not None:
        applied["memory_bytes"] = lower(resource.RLIMIT_AS, memory)
    if (cpu := wanted("cpu_seconds")) is not None:
        applied["cpu_seconds"] = lower(resource.RLIMIT_CPU, cpu, cpu + 5)
    if (files := wanted("max_open_files")) is not None:
        applied["max_open_files"] = lower(resource.RLIMIT_NOFILE, files)
    if (fsize := wanted("file_size_bytes")) is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG
        applied["file_size_bytes"] = lower(resource.RLIMIT_FSIZE, fsize)
    if (procs := wanted("max_processes")) is not None:
        if os.getuid() == 0:
            applied["max_processes"] = "not enforced: RLIMIT_NPROC does not bind for root"
        else:
            total = _count_tasks(os.getuid()) + procs
            applied["max_processes"] = lower(resource.RLIMIT_NPROC, total)
    return applied


# ---------------------------------------------------------------------------- the worker


class UncapturedOutput:
    """`sys.stdout`/`sys.stderr` as threads other than the running cell's see them: their
    text is dropped and counted (in the local environment it goes to the host's console,
    never into a cell). Everything else (`fileno`, `buffer`, ...) is the real fd stream."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self._stream = stream
        self.dropped = 0  # characters; no lock: a forked child must never block on one

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.dropped += len(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class WorkerRepl(Repl):
    """A Repl whose cells are bounded by a repeating SIGALRM, see fd-level output, and leave
    no process running behind them."""

    def __init__(
        self,
        *args: Any,
        fd_capture: FdCapture | None = None,
        uncaptured: tuple[UncapturedOutput, ...] = (),
        reaper: GroupReaper | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fd_capture = fd_capture
        self.uncaptured = uncaptured
        self.reaper = reaper
        self._pid = os.getpid()
        self.cell_timeout: float | None = None
        self.cell_done = True  # cell_finished ran to its end for the last cell
        self._armed = False
        self._deadline: float | None = None
        self._discarded = 0  # fd bytes written between cells, reported by the next cell
        self._uncaptured_seen = self._uncaptured_total()
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """Stop the cell; the timer repeats until the cell has ended, in case the exception
        is lost. Only while the cell's code runs: raised in the runtime's own code (a late
        alarm, handled when the interpreter comes back from unwinding a deep stack) it would
        escape the cell's handling."""
        if self._armed and _in_user_code(frame):
            raise CellTimeout

    def disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _uncaptured_total(self) -> int:
        return sum(stream.dropped for stream in self.uncaptured)

    @property
    def overran(self) -> bool:
        """Whether the current (or last) cell ran past its deadline."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def expired(self) -> bool:
        """Whether the running cell is past its deadline and should stop."""
        return self._armed and self.overran

    def cell_started(self) -> None:
        self.cell_done = False
        if self.fd_capture is not None:
            self._discarded += self.fd_capture.reset()
        self._deadline = None
        if self.cell_timeout is not None and self.cell_timeout > 0:
            self._deadline = time.monotonic() + self.cell_timeout
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.cell_timeout, _ALARM_REPEAT)

    def cell_finished(self) -> None:
        self.disarm()
        if os.getpid() != self._pid:
            return  # a forked child finishing the cell: it exits right after
        killed = self.end_leftovers()
        notes = []
        if self.fd_capture is not None:
            out, err, dropped = self.fd_capture.collect()
            if out:
                sys.stdout.write(out)  # into this cell's capture buffer, after its own prints
            if err:
                sys.stderr.write(err)
            if dropped:
                notes.append(
                    f"[process output truncated: {dropped} bytes written to fd 1/2 were dropped]"
                )
        if self._discarded:
            notes.append(
                f"[{self._discarded} bytes written to fd 1/2 between cells were discarded]"
            )
            self._discarded = 0
        total = self._uncaptured_total()
        if total > self._uncaptured_seen:
            notes.append(
                f"[{total - self._uncaptured_seen} characters printed by threads other than "
                "the cell's own were not captured]"
            )
            self._uncaptured_seen = total
        if killed:
            notes.append(f"[{killed} process(es) the cell left running were killed]")
        for note in notes:
            sys.stderr.write(note + "\n")
        self.cell_done = True

    def end_leftovers(self) -> int:
        """Kill the processes the cell left running; collected too when it overran."""
        if self.reaper is None:
            return 0
        return self.reaper.end_leftovers(reap=self.overran)


_RUN_CELL = Repl.run_cell.__code__
_FORK_CODES: set[Any] = set()  # the code of the fork guard (see _guard_fork)


def _in_user_code(frame: Any) -> bool:
    """Whether a cell's code is on the stack above `Repl.run_cell` (directly or through the
    libraries and helpers it called), and not inside `os.fork()` (whose at-fork hooks would
    swallow the exception; the fork guard raises it when the fork returns)."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<cell "):
            return True
        if code is _RUN_CELL or code in _FORK_CODES:
            return False
        frame = frame.f_back
    return False


def _error_dict(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


class Worker:
    """The worker's state: channel, Repl, and the loop that serves the host's requests."""

    def __init__(
        self, chan_in: int, chan_out: int, *, base64_lines: bool, token: str | None
    ) -> None:
        self.pid = os.getpid()
        self.chan_in = chan_in
        self.base64_lines = base64_lines
        self.token = token
        self.writer = FrameWriter(chan_out, base64_lines=base64_lines)
        self.channel = HostChannel(self.writer)
        self.control: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.fd_capture: FdCapture | None = None
        self.uncaptured: tuple[UncapturedOutput, ...] = ()
        self.streams: tuple[Any, Any] | None = None  # sys.stdout/sys.stderr to run cells with
        self.reaper = GroupReaper(self.pid)
        self.repl: WorkerRepl | None = None
        # What the serve loop is doing, for the reader thread when the channel closes.
        self._state = threading.Lock()
        self._busy_since: float | None = None
        self._busy_deadline: float | None = None
        self._shutdown_seen = False
        self._abandoned = False

    def after_fork_in_child(self) -> None:
        """In a forked child: no channel (its fds are closed), and no lock another thread of
        the parent might have held at the fork."""
        self.writer._lock = threading.Lock()
        self.channel.after_fork_in_child()
        self.channel.fail(ProtocolError("a forked child process has no channel to the host"))
        if self.fd_capture is not None:
            self.fd_capture.after_fork_in_child()

    def start_reader(self) -> None:
        def on_message(message: dict[str, Any]) -> None:
            if "type" not in message and "id" in message:
                self.channel.resolve(message)
            else:
                if message.get("type") == "shutdown":
                    with self._state:
                        self._shutdown_seen = True
                self.control.put(message)

        def run() -> None:
            error = read_messages(self.chan_in, on_message, base64_lines=self.base64_lines)
            self.channel.fail(error or ProtocolError("the host closed the channel"))
            self.channel_closed()

        threading.Thread(target=run, name="rlm-channel-reader", daemon=True).start()

    def channel_closed(self) -> None:
        """The host's end of the channel closed. After a shutdown request that is an orderly
        close: queued requests are still served, each cell within its deadline (plus
        `_ORPHAN_GRACE`). Without one the host is gone: nobody will read a reply, so a running
        cell is not waited for (it might never end), and queued requests are dropped."""
        closed_at = time.monotonic()
        with self._state:
            orderly = self._shutdown_seen
            self._abandoned = not orderly
            busy = self._busy_since is not None
        if not orderly and busy:
            self.stop_group()
        self.control.put(None)
        while True:  # an orderly close: bound what is still queued (the loop ends with us)
            with self._state:
                since, deadline = self._busy_since, self._busy_deadline
            if since is not None:
                limit = deadline if deadline is not None else max(since, closed_at)
                if time.monotonic() >= limit + _ORPHAN_GRACE:
                    self.stop_group()
            time.sleep(0.05)

    def stop_group(self) -> NoReturn:
        """Kill the worker's whole process group (the worker and whatever its cells started)
        and exit; from any thread."""
        if self.reaper.scope is not None:  # daemons that left the group and the tree too
            with contextlib.suppress(Exception):
                end_tree(self.pid, self.pid, scope=self.reaper.scope, wait=0.5)
        if self.reaper.applicable:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        _real_exit(0)  # not leading a group, or PID 1 of a container (immune to the kill)

    # -- requests -------------------------------------------------------------------------
    def hello(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("type") != "hello" or message.get("version") != CHANNEL_VERSION:
            raise ProtocolError("the first message must be a version-1 hello")
        if self.token is not None:
            given = message.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), self.token.encode()
            ):
                raise ProtocolError("wrong channel token")
        config = message.get("config") or {}
        if not isinstance(config, dict):
            raise ProtocolError("hello config must be an object")
        capture_chars = int(config.get("capture_chars", 1_000_000))
        if self.fd_capture is not None:
            self.fd_capture.set_cap(capture_chars)
        self.repl = WorkerRepl(
            self.channel,
            depth=int(config.get("depth", 0)),
            capture_chars=capture_chars,
            tools=config.get("tools") or {},
            fd_capture=self.fd_capture,
            uncaptured=self.uncaptured,
            reaper=self.reaper,
        )
        scope = config.get("scope")
        if scope in ("cgroup", "pidns"):
            self.reaper.scope = scope
        limits = apply_limits(config)
        return {
            "type": "ready",
            "seq": message.get("seq"),
            "pid": self.pid,
            "uid": os.getuid(),
            "python": platform.python_version(),
            "protocol": PROTOCOL_VERSION,
            "limits": limits,
        }

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.repl is not None
        reply: dict[str, Any] = {"type": "loaded", "seq": message.get("seq")}
        try:
            value = self._load_value(message)
            index = message.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"bad index {index!r}")
            if message.get("kind") == "history":
                self.repl.add_history(value, index)
            else:
                self.repl.load_context(value, index)
        except MemoryError:
            reply["error"] = {"type": "MemoryError", "message": "out of memory loading the value"}
        except Exception as exc:
            reply["error"] = _error_dict(exc)
        return reply

    @staticmethod
    def _load_value(message: dict[str, Any]) -> Any:
        if "value" in message:
            return message["value"]
        path = message.get("path")
        if not isinstance(path, str):
            raise ValueError("a load needs a value or a path")
        try:
            with open(path, "rb") as f:
                data = f.read()
        finally:
            if message.get("remove"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        text = data.decode("utf-8")
        del data
        if message.get("format") == "text":
            return text
        return json.loads(text, parse_constant=_reject_constant)

    def run_cell(self, message: dict[str, Any]) -> dict[str, Any]:
        repl = self.repl
        assert repl is not None
        code = message.get("code")
        timeout = message.get("timeout")
        if not isinstance(code, str):
            raise ProtocolError("exec needs the code as a string")
        repl.cell_timeout = float(timeout) if isinstance(timeout, (int, float)) else None
        cap = message.get("capture_chars")
        if isinstance(cap, int) and cap > 0:
            repl.capture_chars = cap
            if self.fd_capture is not None:
                self.fd_capture.set_cap(cap)
        if self.streams is not None:  # a cell that replaced sys.stdout affects only itself
            sys.stdout, sys.stderr = self.streams
        try:
            cell = repl.run_cell(code, timeout_label=repl.cell_timeout)
        except CellTimeout:  # the alarm landed outside user code, around the cell's end
            note = f"TimeoutError: cell exceeded {repl.cell_timeout:g}s"
            cell = CellResult(
                error=note,
                timed_out=True,
                stderr=note + " and was stopped\n",
                locals=repl.user_variables(),
            )
        except MemoryError:  # even reporting the cell's error ran out of memory
            cell = CellResult(
                error="MemoryError: out of memory",
                stderr="MemoryError: the cell ran out of memory (memory limit of the sandbox)\n",
            )
        finally:
            repl.disarm()
        if os.getpid() != self.pid:  # a forked child finished the cell: it must not reply
            _real_exit(0)
        if not repl.cell_done:  # the cell's end was cut short (by a late alarm)
            repl.end_leftovers()
        if cell.final:  # a final value may be large: let the host know the cell has ended
            self.send({"type": "progress", "seq": message.get("seq")})
        return {
            "type": "result",
            "seq": message.get("seq"),
            "stdout": cell.stdout,
            "stderr": cell.stderr,
            "error": cell.error,
            "final": cell.final,
            "final_value": cell.final_json if cell.final else None,
            # The answer's text is sent only when it differs from the value (a str is itself).
            "final_text": None
            if not cell.final or isinstance(cell.final_value, str)
            else cell.final_text,
            "locals": cell.locals,
            "duration": cell.duration,
            "timed_out": cell.timed_out,
            "dropped_chars": cell.dropped_chars,
        }

    def send(self, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        try:
            self.writer.send(message)
        except (ProtocolError, MemoryError, ValueError, TypeError, RecursionError) as exc:
            # The reply itself cannot be sent (over the memory limit, ...): say so instead,
            # so the host gets an ordinary cell error and the sandbox lives on.
            del message
            note = f"{type(exc).__name__}: the reply could not be sent from the sandbox: {exc}"
            self.writer.send(
                {
                    "type": "result",
                    "seq": seq,
                    "error": note,
                    "stdout": "",
                    "stderr": note + "\n",
                    "final": False,
                    "timed_out": False,
                }
            )

    # -- the loop -------------------------------------------------------------------------
    def serve(self) -> int:
        first = self.control.get()
        if first is None:
            return 0
        try:
            self.send(self.hello(first))
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.writer.send({"type": "fatal", "error": _error_dict(exc)})
            return 2
        while True:
            message = self.control.get()
            if message is None:
                return 0
            kind = message.get("type")
            if kind == "shutdown":
                return 0
            timeout = message.get("timeout") if kind == "exec" else None
            with self._state:
                if self._abandoned:
                    return 0
                self._busy_since = time.monotonic()
                self._busy_deadline = (
                    self._busy_since + timeout
                    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                    else None
                )
            try:
                if kind == "exec":
                    reply = self.run_cell(message)
                elif kind == "load":
                    reply = self.load(message)
                else:
                    raise ProtocolError(f"unknown request {kind!r}")
            except Exception as exc:
                reply = {"type": "error", "seq": message.get("seq"), "error": _error_dict(exc)}
            finally:
                with self._state:
                    self._busy_since = self._busy_deadline = None
            self.send(reply)


_real_exit = os._exit


def _guard_exit(worker_pid: int) -> None:
    """`os._exit()` in a cell ends the cell (as SystemExit), not the sandbox; forked children
    still exit for real."""

    def _exit(status: int) -> NoReturn:
        if os.getpid() == worker_pid:
            raise SystemExit(status)
        _real_exit(status)

    os._exit = _exit
    try:
        import posix

        posix._exit = _exit
    except ImportError:  # pragma: no cover - not POSIX
        pass


def _guard_fork(worker: Worker) -> None:
    """`os.fork()` in the worker raises CellTimeout once the cell is past its deadline. A
    signal arriving during a fork is handled inside the at-fork hooks, which swallow any
    exception, so a loop of forks would otherwise rarely see its timeout."""
    real_fork = os.fork

    def fork() -> int:
        try:
            return real_fork()
        finally:
            repl = worker.repl
            if os.getpid() == worker.pid and repl is not None and repl.expired:
                # Raised from `finally` on purpose: it replaces the pid or the EAGAIN.
                raise CellTimeout

    _FORK_CODES.add(fork.__code__)
    os.fork = fork
    try:
        import posix

        posix.fork = fork
    except ImportError:  # pragma: no cover - not POSIX
        pass


def claim_stdio() -> tuple[int, int, int]:
    """Move the channel to private fds; fd 0 -> /dev/null. Returns (in, out, diagnostics)."""
    chan_in = os.dup(0)  # os.dup: not inherited by child processes
    chan_out = os.dup(1)
    diag = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    return chan_in, chan_out, diag


def _text_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def main() -> int:
    base64_lines = os.environ.pop(ENCODING_ENV, "") == "base64"
    token = os.environ.pop(TOKEN_ENV, None)
    lead_own_group()  # so what cells start can be found (and ended) as the group's members
    become_subreaper()  # ... and as descendants, even those that left the group
    chan_in, chan_out, diag = claim_stdio()
    fd_capture = FdCapture(1_000_000)  # from here on fds 1/2 are pipes, not the channel
    uncaptured = _redirect_output()
    capture.install()  # the cell's own thread is captured; others reach `uncaptured`
    worker = Worker(chan_in, chan_out, base64_lines=base64_lines, token=token)
    worker.fd_capture = fd_capture
    worker.uncaptured = uncaptured
    worker.streams = (sys.stdout, sys.stderr)

    def in_child() -> None:  # a forked child never speaks on the channel
        for fd in (chan_in, chan_out, diag):
            with contextlib.suppress(OSError):
                os.close(fd)
        worker.after_fork_in_child()

    os.register_at_fork(after_in_child=in_child)
    _guard_exit(worker.pid)
    _guard_fork(worker)
    worker.start_reader()
    try:
        return worker.serve()
    except BaseException:
        with contextlib.suppress(Exception):
            write_all(diag, traceback.format_exc().encode("utf-8", "replace"))
        return 70
    finally:
        # End what cells started on the way out, so a host that died without cleaning up
        # leaves nothing behind.
        worker.reaper.end_leftovers(reap=False)


def _redirect_output() -> tuple[UncapturedOutput, UncapturedOutput]:
    """sys.stdout/sys.stderr drop what reaches them (only other threads' writes do, once the
    capture routes the cell's own); their dunder originals write to fds 1/2, unbuffered."""
    out, err = _text_stream(1), _text_stream(2)
    uncaptured = UncapturedOutput(out), UncapturedOutput(err)
    sys.stdout, sys.stderr = uncaptured
    setattr(sys, "__stdout__", out)  # noqa: B010 - mypy treats these as Final
    setattr(sys, "__stderr__", err)  # noqa: B010
    return uncaptured


if __name__ == "__main__":
    _real_exit(main())
