"""`LocalREPL`: cells run in this process, in the calling thread.

Fast and dependency-free, and NOT a sandbox: code in a cell can do anything this process can
(read files, environment variables, import anything). Use it for trusted code; the isolated
environments ("process", "docker", ...) run the same runtime in a separate process.

Output is captured per thread (`rlm.runtime.capture`), so several LocalREPLs can run cells at
once in different threads. The cell timeout is enforced by a watchdog thread that injects
`CellTimeout` into the running thread. Python checks for such an exception only between
bytecodes, so a call blocked inside C (``time.sleep(10**6)``, a blocking socket read) cannot be
interrupted in-process, and neither can code that catches `BaseException` and carries on; the
"process" environment kills its worker instead.
"""

from __future__ import annotations

import copy
import ctypes
import math
import threading
from typing import Any

from rlm.core.types import Message, REPLResult
from rlm.environments.base import BaseEnv, HandlerEndpoint
from rlm.errors import ConfigurationError, ContextLoadError, SandboxError
from rlm.runtime.protocol import Connection
from rlm.runtime.repl import CellTimeout, Repl

_ACCEPTED = ("handler", "depth", "timeout", "max_output_chars", "tools")
_MAX_CONTEXT_DEPTH = 500


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in the thread at its next bytecode (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class _Watchdog:
    """Injects `CellTimeout` once into one thread, unless disarmed first.

    Race-free: `disarm` stops the watchdog and joins it, so no injection can follow, then
    clears anything still pending, retrying if the (single) injection lands during the join.
    After `disarm` returns no `CellTimeout` can reach the thread's later (host) code.
    """

    def __init__(self, thread_id: int, seconds: float) -> None:
        self._thread_id = thread_id
        self._seconds = seconds
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="rlm-cell-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self._done.wait(self._seconds):
            self.fired = True
            _set_async_exc(self._thread_id, CellTimeout)

    def disarm(self) -> None:
        self._done.set()
        while True:
            try:
                self._thread.join()
                if self.fired:
                    _set_async_exc(self._thread_id, None)
                return
            except CellTimeout:  # the injection arrived just now; nothing more can follow
                continue


class _TimedRepl(Repl):
    """A Repl whose cells are bracketed by a watchdog."""

    timeout: float | None = None
    _watchdog: _Watchdog | None = None

    def cell_started(self) -> None:
        if self.timeout is not None:
            self._watchdog = _Watchdog(threading.get_ident(), self.timeout)

    def cell_finished(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.disarm()


class _LazyChannel:
    """Connects to the LMHandler on the first request, so an env that never calls costs nothing."""

    def __init__(self, endpoint: HandlerEndpoint) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    def _connection(self) -> Connection:
        with self._lock:
            if self._closed:
                raise SandboxError("the environment was cleaned up")
            if self._conn is None or self._conn.closed:
                e = self._endpoint
                self._conn = Connection.connect(e.host, e.port, e.token)
            return self._conn

    def submit(self, payload: dict[str, Any]) -> Any:
        return self._connection().submit(payload)

    def request(self, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self._connection().request(payload, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _json_copy(
    value: Any, where: str = "context", depth: int = 0, seen: tuple[int, ...] = ()
) -> Any:
    """Deep copy of a JSON-compatible value; anything else is a ContextLoadError."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ContextLoadError(f"{where} is {value}, which is not JSON-compatible")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            raise ContextLoadError(f"{where} contains itself (a reference cycle)")
        if depth >= _MAX_CONTEXT_DEPTH:
            raise ContextLoadError(f"{where} is nested more than {_MAX_CONTEXT_DEPTH} levels deep")
        inner = (*seen, id(value))
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ContextLoadError(
                        f"{where} has the non-str key {key!r}; JSON object keys must be str"
                    )
                out[str(key)] = _json_copy(item, f"{where}[{key!r}]", depth + 1, inner)
            return out
        return [_json_copy(item, f"{where}[{i}]", depth + 1, inner) for i, item in enumerate(value)]
    raise ContextLoadError(
        f"{where} is a {type(value).__name__}, which is not JSON-compatible; pass str, int, "
        "float, bool, None, or lists/dicts of those (convert it first, e.g. list(...) or str(...))"
    )


class LocalREPL(BaseEnv):
    """Runs cells in-process. Not a security boundary (see the module docstring)."""

    name = "local"
    isolated = False

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(_ACCEPTED))
        if unknown:
            raise ConfigurationError(
                f"unknown keyword argument(s) for environment 'local': {', '.join(unknown)}; "
                f"accepted: {', '.join(_ACCEPTED)}"
            )
        super().__init__(**kwargs)
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds or None, got {self.timeout!r}"
            )
        if self.max_output_chars <= 0:
            raise ConfigurationError(
                f"max_output_chars must be positive, got {self.max_output_chars}"
            )
        self._channel = _LazyChannel(self.handler) if self.handler is not None else None
        tools = {
            name: {"description": spec.description, "callable": spec.callable, "value": spec.value}
            for name, spec in self.tools.items()
        }
        self._repl = _TimedRepl(
            self._channel,
            depth=self.depth,
            capture_chars=max(1_000_000, 10 * self.max_output_chars),
            tools=tools,
        )
        self._repl.timeout = self.timeout
        self._lock = threading.Lock()  # one cell at a time: the namespace is shared
        self._closed = False

    def __enter__(self) -> LocalREPL:
        return self

    @property
    def namespace(self) -> dict[str, Any]:
        """The live namespace (for inspection and tests)."""
        return self._repl.namespace

    def load_context(self, context: Any, index: int = 0) -> None:
        """Bind a deep copy of `context` as `context_{index}` (and `context` for index 0)."""
        try:
            value = _json_copy(context)
        except RecursionError:
            raise ContextLoadError("context is nested too deeply") from None
        self._repl.load_context(value, index)

    def add_history(self, history: list[Message], index: int = 0) -> None:
        self._repl.add_history(copy.deepcopy(history), index)

    def execute(self, code: str) -> REPLResult:
        if self._closed:
            raise SandboxError("the environment was cleaned up")
        with self._lock:
            cell = self._repl.run_cell(code, timeout_label=self.timeout)
        return REPLResult(
            stdout=cell.stdout,
            stderr=cell.stderr,
            locals=cell.locals,
            execution_time=cell.duration,
            final_answer=cell.final_text if cell.final else None,
            final_value=cell.final_value if cell.final else None,
            error=cell.error,
            timed_out=cell.timed_out,
        )

    def cleanup(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._channel.close()
