"""Cells run by an IPython shell, with the helpers and answer rules of every rlm environment.

This module runs where the shell lives: in the host process (``kernel_mode="in_process"``) or
inside the ipykernel subprocess (``kernel_mode="subprocess"``, loaded there by
`install_in_kernel`). It reuses `rlm.runtime.repl.Repl` for everything but running the code:
the helpers (`llm_query`, ..., custom tools) are the same protocol requests to the LMHandler,
and FINAL/FINAL_VAR/`answer`, reserved names and tracebacks follow the same rules. IPython
compiles and runs the code, so magics, rich display and the `_`/`In`/`Out` history work.

A cell's timeout is armed around each statement IPython executes (only user code, never the
shell's own bookkeeping): SIGALRM when the shell runs on the main thread, which also interrupts
a blocking C call such as ``time.sleep``, else the same watchdog `LocalREPL` uses.
"""

from __future__ import annotations

import codeop
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from rlm.environments.watchdog import Watchdog
from rlm.runtime.jsondata import safe_str, to_jsonable
from rlm.runtime.repl import CellTimeout, Repl, _FinalSignal, _sleep_until_done

CELL_MIME = "application/vnd.rlm.cell+json"
"""The MIME type of the per-cell summary a kernel publishes after each user cell."""

# Names IPython itself keeps in the namespace: never reported as the user's variables.
_IPYTHON_NAME = re.compile(r"^(_+|_\d+|_i+|_i\d+|_ih|_oh|_dh|In|Out|exit|quit|get_ipython|open)$")
_REENTRY = (
    "Reentrant execute_code is not supported: a running cell (or a sub-call it made) tried "
    "to run another cell in the same REPL, which would corrupt the running cell's state. "
    "Use a separate REPL instance for nested execution."
)

warnings.filterwarnings("ignore", message="To exit: use 'exit', 'quit', or Ctrl-D.")


def _no_input(*_args: Any, **_kwargs: Any) -> str:
    """`input()` would block the unattended cell forever on a stdin nobody writes."""
    raise RuntimeError("input() is disabled in this REPL: cells cannot prompt for stdin")


class _Alarm:
    """SIGALRM-based cell timer for a shell on the main thread; interrupts blocking C calls."""

    def __init__(self, seconds: float) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._fire)
        self._started = time.monotonic()
        self._previous_timer = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))

    @staticmethod
    def _fire(signum: int, frame: Any) -> None:
        raise CellTimeout

    def disarm(self) -> None:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # an alarm already queued is dropped
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)
        delay, interval = self._previous_timer
        if delay > 0:  # a timer of the embedding application: give back what is left of it
            left = delay - (time.monotonic() - self._started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


def _start_timer(seconds: float) -> Any:
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
        return _Alarm(seconds)
    return Watchdog(threading.get_ident(), max(seconds, 1e-3))


class ShellRepl(Repl):
    """A `Repl` whose namespace is an IPython shell's `user_ns` and whose cells IPython runs."""

    def __init__(
        self,
        shell: Any,
        channel: Any = None,
        *,
        depth: int = 0,
        capture_chars: int = 1_000_000,
        tools: Mapping[str, dict[str, Any]] | None = None,
        reenter: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__(channel, depth=depth, capture_chars=capture_chars, tools=tools)
        self.shell = shell
        self.timeout: float | None = None
        self.subcall_timeout: float | None = None
        self._reenter = reenter
        self._deadline: float | None = None
        self._timer: Any = None
        self._cell_thread: int | None = None
        self._reserved["input"] = _no_input
        shell.user_ns["answer"] = self.namespace["answer"]
        shell.user_ns.update(self._reserved)
        self.namespace = shell.user_ns
        # Tracebacks are formatted by `finish` (like every other environment's); IPython's own
        # printer is silenced, and cells are named "<cell N>" so the runtime can find them.
        shell.showtraceback = lambda *a, **k: None
        shell.showsyntaxerror = lambda *a, **k: None
        shell.showindentationerror = lambda *a, **k: None
        # IPython also formats every error for its history with ultratb, which reads the
        # source of every frame: minutes for a 10^5-frame RecursionError. Ours is enough.
        shell._format_exception_for_storage = self._stored_error
        shell.compile.get_code_name = self._code_name
        # Syntax errors read as in plain Python ("'(' was never closed", not "incomplete
        # input"): the incomplete-input mode exists for interactive line continuation.
        shell.compile.flags &= ~getattr(codeop, "PyCF_ALLOW_INCOMPLETE_INPUT", 0)
        run_code = shell.run_code

        async def timed_run_code(code_obj: Any, result: Any = None, *, async_: bool = False) -> Any:
            self._arm()
            try:
                return await run_code(code_obj, result, async_=async_)
            finally:
                self._disarm()

        shell.run_code = timed_run_code

    def _call(self, payload: dict[str, Any]) -> Any:
        """One request, waited for at most `subcall_timeout` seconds (None: no limit)."""
        future = self._submit(payload)
        _sleep_until_done(future, self.subcall_timeout)
        if not future.done():
            raise TimeoutError(f"no answer from the LM handler within {self.subcall_timeout:g}s")
        return future.result()

    # ----------------------------------------------------------------- timer
    def _arm(self) -> None:
        if self._deadline is not None and self._timer is None:
            self._timer = _start_timer(self._deadline - time.monotonic())

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.disarm()

    # ------------------------------------------------------------------ cells
    def execute_code(self, code: str) -> Any:
        """Run a cell from outside; a cell calling this on its own REPL is refused."""
        if self._cell_thread is not None or self._reenter is None:
            raise RuntimeError(_REENTRY)
        return self._reenter(code)

    def _stored_error(self, exc: BaseException, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"ename": type(exc).__name__, "evalue": safe_str(exc), "traceback": []}

    def _code_name(self, raw_code: str, code: str, number: int) -> str:
        """The file name IPython compiles a cell under; its source is kept for tracebacks."""
        name = f"<cell {number}>"
        self._sources[name] = raw_code.splitlines()
        return name

    def begin(self) -> None:
        """Start of a user cell: reset the answer, start its clock."""
        self._final = None
        self._cell_thread = threading.get_ident()
        self._deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def finish(self, result: Any) -> dict[str, Any]:
        """End of a user cell: the JSON summary (error, traceback, answer, variables)."""
        self._deadline = None
        self._disarm()
        self._cell_thread = None
        error = result.error_before_exec or result.error_in_exec
        summary: dict[str, Any] = {"error": None, "stderr": "", "timed_out": False}
        notes: list[str] = []
        if isinstance(error, CellTimeout):
            summary["timed_out"] = True
            summary["error"] = f"TimeoutError: cell exceeded {self._limit()}"
            where = self._format_exception(error).splitlines(keepends=True)[:-1]
            notes.append("".join(where) + f"{summary['error']} and was stopped\n")
        elif error is not None and not isinstance(error, _FinalSignal):
            message = safe_str(error)
            summary["error"] = (
                f"{type(error).__name__}: {message}" if message else type(error).__name__
            )
            notes.append(self._format_exception(error))
        notes.extend(self._restore_reserved())
        self._check_answer()
        if self._final is not None:
            value = self._final[0]
            summary["final"] = True
            summary["final_value"] = to_jsonable(value)
            summary["final_text"] = value if isinstance(value, str) else safe_str(value)
            self._final_live = value
        else:
            summary["final"] = False
            self._final_live = None
        summary["stderr"] = "".join(notes)
        summary["locals"] = self.user_variables()
        return summary

    def _limit(self) -> str:
        return "its time limit" if self.timeout is None else f"{self.timeout:g}s"

    def user_variables(self) -> dict[str, str]:
        return {
            name: kind
            for name, kind in super().user_variables().items()
            if not _IPYTHON_NAME.match(name)
        }


# ---------------------------------------------------------------------- inside the kernel


class _KernelCells:
    """The kernel side of `kernel_mode="subprocess"`: hooks that bracket every user cell."""

    def __init__(self, shell: Any, config: Mapping[str, Any]) -> None:
        from rlm.environments._ipython_channel import RoutedChannel

        self.repl = ShellRepl(
            shell,
            RoutedChannel.from_config(config.get("channels") or {}),
            depth=int(config.get("depth", 0)),
            capture_chars=int(config.get("capture_chars", 1_000_000)),
            tools=config.get("tools") or {},
        )
        self.repl.timeout = config.get("timeout")
        self.repl.subcall_timeout = config.get("subcall_timeout")
        self._streams = (sys.stdout, sys.stderr)
        shell.events.register("pre_run_cell", self._pre)
        shell.events.register("post_run_cell", self._post)

    def _pre(self, info: Any) -> None:
        # A cell that replaced sys.stdout/stderr affects only itself, as in every environment;
        # the kernel gave this request's parent to whatever was sys.stdout, so pass it on.
        if (sys.stdout, sys.stderr) != self._streams:
            sys.stdout, sys.stderr = self._streams
            parent = getattr(self.repl.shell, "parent_header", None) or {}
            for stream in self._streams:
                if hasattr(stream, "set_thread_parent"):
                    stream.parent_header = parent.get("header", parent)  # type: ignore[union-attr]
        self.repl.begin()

    def _post(self, result: Any) -> None:
        from IPython.display import publish_display_data

        summary = self.repl.finish(result)
        publish_display_data({CELL_MIME: summary})

    def set_timeout(self, seconds: float | None) -> None:
        self.repl.timeout = seconds

    def set_channels(self, config_json: str) -> None:
        """Point the helpers at another LMHandler (`update_handler_address`)."""
        from rlm.environments._ipython_channel import RoutedChannel

        old = self.repl.channel
        self.repl.channel = RoutedChannel.from_config(json.loads(config_json))
        if old is not None:
            old.close()

    def load_file(self, path: str, index: int, what: str) -> None:
        """Bind `context_{index}` / `history_{index}` from a JSON file the host wrote."""
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
        finally:
            os.unlink(path)
        if what == "context":
            self.repl.load_context(value, index)
        else:
            self.repl.add_history(value, index)


_kernel: _KernelCells | None = None


def install_in_kernel(config_json: str) -> None:
    """Called once in a fresh kernel by the host: wire the helpers and the cell hooks."""
    global _kernel
    from IPython import get_ipython

    _kernel = _KernelCells(get_ipython(), json.loads(config_json))


def kernel() -> _KernelCells:
    if _kernel is None:
        raise RuntimeError("rlm is not installed in this kernel")
    return _kernel
