"""The sandbox worker: `python3 -m rlm.runtime.worker`, the same in every isolated environment.

It holds one `Repl` (namespace, helpers, final answers) and talks to the host over ONE byte
channel, its stdin/stdout, in the frames of `rlm.runtime.channel`, through one object, its
`HostLink` (`rlm.runtime.hostlink`, which also says how a supervisor process would take the
channel over):

host -> worker   hello (token, config) | load (context/history) | exec (a cell) | shutdown,
                 and responses `{"id", "result" | "error"}` to the worker's requests
worker -> host   ready | loaded | result (each reply echoes the `seq` of its request; a cell's
                 result carries the cell's seq), and LM requests: the LM service's request
                 payloads plus an `id`, which the host hands to its LM service.

The worker never connects anywhere: the host starts it and always initiates. At start it moves
the channel to private descriptors and points fd 0 at /dev/null and fds 1/2 at pipes drained
into the running cell's output (`rlm.runtime.capture`), so `print`, `os.write(1, ...)`,
`sys.__stdout__` or a child process cannot write frames. Transports that only carry text (some
cloud SDK streams) set RLM_CHANNEL_ENCODING=base64: each frame is then one base64 line.

Only the running cell's own thread is captured at the Python level (`print`, `sys.stdout`):
what other threads write there is dropped and counted, as in the local environment, so a
thread of an earlier cell never speaks in a later one. Bytes written to fds 1/2 cannot be told
apart by thread: they belong to the cell running when they arrive, and are discarded (with a
count) between cells.

The pieces: resource limits from the hello (`rlm.runtime.limits`), cells under a repeating
alarm that leave no process behind (`rlm.runtime.worker_repl`), and here the serve loop. When
the host goes away mid-cell (its end of the channel closes without a shutdown), the worker
kills its whole process group at once instead of waiting for the cell.

Standard library only (plus `rlm.errors` and the sibling runtime modules).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

from rlm.errors import ProtocolError

from . import capture
from .capture import FdCapture, UncapturedOutput
from .channel import CHANNEL_VERSION, ENCODING_ENV, TOKEN_ENV, write_all
from .hostlink import HostLink
from .jsondata import strict_loads
from .limits import apply_limits
from .procgroup import GroupReaper, become_subreaper, end_tree, lead_own_group
from .protocol import PROTOCOL_VERSION
from .repl import CellResult, CellTimeout
from .worker_repl import WorkerRepl, guard_exit, guard_fork, real_exit

_ORPHAN_GRACE = 1.0  # after an orderly close, a cell may overrun its deadline this long


def _error_dict(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


class Worker:
    """The worker's state: channel, Repl, and the loop that serves the host's requests."""

    def __init__(self, link: HostLink, *, token: str | None) -> None:
        self.pid = os.getpid()
        self.token = token
        self.link = link  # everything said to or heard from the host passes through it
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
        self.link.after_fork_in_child()
        if self.fd_capture is not None:
            self.fd_capture.after_fork_in_child()

    def start_reader(self) -> None:
        def on_message(message: dict[str, Any]) -> None:
            if message.get("type") == "shutdown":
                with self._state:
                    self._shutdown_seen = True
            self.control.put(message)

        self.link.start(on_message, self.channel_closed)

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
        real_exit(0)  # not leading a group, or PID 1 of a container (immune to the kill)

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
            self.link,
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
        return strict_loads(text, "the staged value")

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
            real_exit(0)
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
            self.link.send(message)
        except (ProtocolError, MemoryError, ValueError, TypeError, RecursionError) as exc:
            # The reply itself cannot be sent (over the memory limit, ...): say so instead,
            # so the host gets an ordinary cell error and the sandbox lives on.
            del message
            note = f"{type(exc).__name__}: the reply could not be sent from the sandbox: {exc}"
            self.link.send(
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
                self.link.send({"type": "fatal", "error": _error_dict(exc)})
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
    worker = Worker(HostLink(chan_in, chan_out, base64_lines=base64_lines), token=token)
    worker.fd_capture = fd_capture
    worker.uncaptured = uncaptured
    worker.streams = (sys.stdout, sys.stderr)

    def in_child() -> None:  # a forked child never speaks on the channel
        for fd in (chan_in, chan_out, diag):
            with contextlib.suppress(OSError):
                os.close(fd)
        worker.after_fork_in_child()

    os.register_at_fork(after_in_child=in_child)
    guard_exit(worker.pid)
    guard_fork(worker.pid, lambda: worker.repl)
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
    real_exit(main())
