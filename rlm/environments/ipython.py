"""`IPythonREPL` (`environment="ipython"`): cells run by IPython, with every rlm helper.

Two kernel modes:

- ``kernel_mode="in_process"`` (default): an `InteractiveShell` of its own in this process, on
  a per-instance module (two instances never share ``__main__``). Like `LocalREPL`, it is NOT a
  sandbox. The cell timeout is SIGALRM when the cell runs on the main thread (it interrupts
  ``time.sleep`` and other blocking C calls too), else the watchdog `LocalREPL` uses (which,
  like LocalREPL's, cannot stop a call blocked inside C). While a cell runs, IPython swaps
  ``sys.displayhook`` and a few builtins process-wide, so in-process shells running cells in
  several threads at once may update each other's ``_``; use the subprocess mode for that.
- ``kernel_mode="subprocess"``: an ipykernel process (jupyter_client) under this interpreter.
  Timeouts are hard (the kernel's timer, then SIGINT, then a restart; see `_ipython_kernel`);
  the host process's namespace, cwd and signals are out of the cell's reach.

In both, `llm_query`, `llm_query_batched`, `llm_query_async`, `rlm_query`, `rlm_query_batched`
and custom tools are requests to the LMHandler (`rlm.runtime.repl.Repl` runs inside the shell),
so limits and accounting stay host-side; `SHOW_VARS`, `answer`, FINAL/FINAL_VAR and versioned
`context_N`/`history_N` behave as in every other environment; and IPython adds magics
(``%timeit``, ``%%capture``, ``!ls``...), rich display and the ``_``/``In``/``Out`` history.

The constructor also takes the reference's (alexzhang13/rlm) arguments, in its order, so
``IPythonREPL(lm_handler_address=..., context_payload=..., subcall_fn=..., custom_tools=...)``
keeps working; a `subcall_fn` or callable custom tools are served by a private LMHandler
(`_ipython_hub`), so they too are protocol requests, recorded per cell in `REPLResult.rlm_calls`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from rlm.core.types import Message, REPLResult
from rlm.environments.base import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MAX_OUTPUT_CHARS,
    BaseEnv,
    Handler,
    HandlerEndpoint,
    ToolSpec,
)
from rlm.errors import ConfigurationError, ContextLoadError, SandboxError
from rlm.runtime.jsondata import json_copy

KernelMode = Literal["in_process", "subprocess"]
_UNSET: Any = object()
_CELLS = "__import__('rlm.environments._ipython_cells', fromlist=['kernel'])"


def _endpoint_dict(handler: Handler | None) -> dict[str, Any] | None:
    """Address and token for the kernel, which reaches the service over TCP."""
    if handler is None:
        return None
    endpoint = handler if isinstance(handler, HandlerEndpoint) else handler.endpoint()
    return {"host": endpoint.host, "port": endpoint.port, "token": endpoint.token}


def _as_endpoint(address: Any) -> HandlerEndpoint | None:
    """A handler endpoint from what a caller passed as `lm_handler_address`.

    Ours carry a session token (`HandlerEndpoint`, or ``(host, port, token)``); a bare
    ``(host, port)`` of the reference has none, so its requests cannot authenticate.
    """
    if address is None or isinstance(address, HandlerEndpoint):
        return address
    token = getattr(address, "token", None)
    if isinstance(address, (tuple, list)) and len(address) == 3 and token is None:
        token = address[2]
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        if token is None:
            return None
        return HandlerEndpoint(str(address[0]), int(address[1]), str(token))
    raise ConfigurationError(
        f"lm_handler_address must be a HandlerEndpoint or a (host, port[, token]) tuple, "
        f"got {address!r}"
    )


class IPythonREPL(BaseEnv):
    """IPython-backed REPL, in process or in an ipykernel subprocess (module docstring)."""

    name = "ipython"
    isolated = False

    def __init__(
        self,
        lm_handler_address: Any = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 0,
        subcall_fn: Callable[[str, str | None], Any] | None = None,
        custom_tools: Mapping[str, Any] | None = None,
        custom_sub_tools: Mapping[str, Any] | None = None,
        kernel_mode: KernelMode = "in_process",
        cell_timeout: float | None = _UNSET,
        startup_timeout: float = 60.0,
        subcall_timeout: float | None = None,
        max_concurrent_subcalls: int = 4,
        *,
        handler: HandlerEndpoint | None = None,
        timeout: float | None = _UNSET,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        tools: Mapping[str, ToolSpec] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"unknown keyword argument(s) for environment 'ipython': "
                f"{', '.join(sorted(unknown))}"
            )
        if kernel_mode not in ("in_process", "subprocess"):
            raise ConfigurationError(
                f"kernel_mode must be 'in_process' or 'subprocess', got {kernel_mode!r}"
            )
        if not startup_timeout > 0:
            raise ConfigurationError(f"startup_timeout must be positive, got {startup_timeout!r}")
        if subcall_timeout is not None and not subcall_timeout > 0:
            raise ConfigurationError(
                f"subcall_timeout must be positive or None (got {subcall_timeout!r}); "
                "use None to disable the timeout"
            )
        if cell_timeout is not _UNSET and timeout is not _UNSET:
            raise ConfigurationError("pass either timeout or cell_timeout, not both")
        if cell_timeout is not _UNSET:  # the reference's: 0 or less means no timeout
            timeout = cell_timeout if cell_timeout and cell_timeout > 0 else None
        elif timeout is _UNSET:
            timeout = DEFAULT_CELL_TIMEOUT
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        if max_output_chars <= 0:
            raise ConfigurationError(f"max_output_chars must be positive, got {max_output_chars}")
        if handler is not None and lm_handler_address is not None:
            raise ConfigurationError("pass either handler or lm_handler_address, not both")
        if custom_tools and tools:
            raise ConfigurationError(
                "custom_tools cannot be combined with tools (RLM passes its custom_tools as tools)"
            )
        super().__init__(
            handler=handler if handler is not None else _as_endpoint(lm_handler_address),
            depth=depth,
            timeout=timeout,
            max_output_chars=max_output_chars,
            tools=tools,
        )
        self.lm_handler_address = lm_handler_address if handler is None else handler
        self.kernel_mode: KernelMode = kernel_mode
        self.persistent = persistent
        self.subcall_fn = subcall_fn
        self.startup_timeout = startup_timeout
        self.subcall_timeout = subcall_timeout
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.custom_tools = dict(custom_tools or {})
        self.custom_sub_tools = (
            dict(custom_sub_tools) if custom_sub_tools is not None else self.custom_tools
        )
        callables: dict[str, Callable[..., Any]] = {}
        if self.custom_tools:
            from rlm.environments.tools import normalise_tools

            callables, specs = normalise_tools(self.custom_tools)
            self.tools = specs

        self.temp_dir = tempfile.mkdtemp(prefix="rlm-ipython-")
        self._lock = threading.Lock()  # one cell (or context load) at a time
        self._threads_lock = threading.Lock()
        self._subcall_threads: set[int] = set()
        self._executing_threads: set[int] = set()
        self._context_count = 0
        self._history_count = 0
        self._shadow: dict[str, Any] = {}  # contexts/histories by name (subprocess `locals`)
        self._closed = False
        self._hub: Any = None
        self._repl: Any = None
        self._channel: Any = None
        self._shell: Any = None
        self._user_module: types.ModuleType | None = None
        self._kernel: Any = None
        self._kernel_timeout: float | None = None
        self._hub_types: list[str] = []
        try:
            if subcall_fn is not None or callables:
                from rlm.environments._ipython_hub import Hub

                self._hub = Hub(
                    depth=depth,
                    subcall_fn=subcall_fn,
                    tools=callables,
                    max_concurrent=max_concurrent_subcalls,
                    subcall_threads=self._subcall_threads,
                    threads_lock=self._threads_lock,
                )
                if subcall_fn is not None:
                    self._hub_types += ["rlm", "rlm_batch"]
                if callables:
                    self._hub_types.append("tool")
            self.setup()
            if context_payload is not None:
                self.load_context(context_payload)
            if setup_code:
                self.execute_code(setup_code)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to see
                self.cleanup()
            raise

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        if self.kernel_mode == "in_process":
            self._setup_in_process()
        else:
            self._setup_subprocess()

    def _channel_config(self) -> dict[str, Any]:
        return {
            "primary": _endpoint_dict(self.handler),
            "hub": _endpoint_dict(self._hub.endpoint) if self._hub is not None else None,
            "hub_types": self._hub_types,
        }

    def _tool_config(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"description": spec.description, "callable": spec.callable, "value": spec.value}
            for name, spec in self.tools.items()
        }

    def _setup_in_process(self) -> None:
        from rlm._optional import require

        require("IPython", extra="ipython", package="ipython")
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        from rlm.environments._ipython_cells import ShellRepl
        from rlm.environments._ipython_channel import RoutedChannel

        config = Config()
        config.HistoryManager.enabled = False  # no SQLite history file per instance
        module = types.ModuleType(f"_rlm_ipython_main_{uuid.uuid4().hex[:12]}")
        self._user_module = module
        shell = InteractiveShell(config=config, user_module=module)
        self._shell = shell
        shell.separate_out = ""
        shell.displayhook.write_output_prompt = lambda: None  # "42", not "Out[3]: 42"
        self._channel = RoutedChannel.from_config(self._channel_config())
        self._repl = ShellRepl(
            shell,
            self._channel,
            depth=self.depth,
            capture_chars=max(1_000_000, 10 * self.max_output_chars),
            tools=self._tool_config(),
            reenter=self.execute_code,
        )
        self._repl.timeout = self.timeout
        self._repl.subcall_timeout = self.subcall_timeout

    def _setup_subprocess(self) -> None:
        from rlm._optional import require

        require("jupyter_client", extra="ipython")
        require("ipykernel", extra="ipython")
        from rlm.environments._ipython_kernel import Kernel

        config = {
            "channels": self._channel_config(),
            "depth": self.depth,
            "capture_chars": max(1_000_000, 10 * self.max_output_chars),
            "tools": self._tool_config(),
            "timeout": self.timeout,
            "subcall_timeout": self.subcall_timeout,
        }
        bootstrap = f"{_CELLS}.install_in_kernel({json.dumps(config)!r})"
        self._kernel = Kernel(
            cwd=self.temp_dir, startup_timeout=self.startup_timeout, bootstrap=bootstrap
        )
        self._kernel_timeout = self.timeout

    # ------------------------------------------------------------ properties
    @property
    def cell_timeout(self) -> float | None:
        """The reference's name for `timeout` (seconds per cell, None for none)."""
        return self.timeout

    @cell_timeout.setter
    def cell_timeout(self, seconds: float | None) -> None:
        self.timeout = seconds if seconds and seconds > 0 else None

    @property
    def locals(self) -> dict[str, Any]:
        """The user's variables: live values in process; in a kernel, only what the host
        loaded (contexts, histories), as in the reference."""
        if self._repl is not None:
            names = self._repl.user_variables()
            return {
                k: v
                for k, v in self._repl.namespace.items()
                if k in names or k.startswith(("context", "history"))
            }
        return dict(self._shadow)

    # ------------------------------------------------------------ contexts
    def load_context(self, context: Any, index: int = 0) -> None:
        """Bind a copy of `context` as `context_{index}` (and `context` for index 0)."""
        value = json_copy(context, "context", error=ContextLoadError)
        with self._lock:
            self._bind("context", value, index)
            self._context_count = max(self._context_count, index + 1)

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """The reference's persistence API: the next `context_N` unless an index is given."""
        with self._lock:
            index = self._context_count if context_index is None else context_index
            self._context_count = max(self._context_count, index + 1)
        self.load_context(context_payload, index)
        return index

    def get_context_count(self) -> int:
        return self._context_count

    def add_history(self, history: list[Message], index: int | None = None) -> int:  # type: ignore[override]
        """Bind a copy of `history` as `history_{index}` (the next index when None)."""
        value = json_copy(history, "history", error=ContextLoadError)
        with self._lock:
            if index is None:
                index = self._history_count
            self._history_count = max(self._history_count, index + 1)
            self._bind("history", value, index)
        return index

    def get_history_count(self) -> int:
        return self._history_count

    def _bind(self, what: str, value: Any, index: int) -> None:
        self._check_open()
        name = f"{what}_{index}"
        if self._repl is not None:
            if what == "context":
                self._repl.load_context(value, index)
            else:
                self._repl.add_history(value, index)
            return
        self._send_value(what, value, index)
        self._shadow[name] = value
        alias = [k for k in self._shadow if k.startswith(f"{what}_")]
        if what == "context":
            self._shadow["context"] = self._shadow.get("context_0")
        else:
            newest = max(int(k.split("_")[1]) for k in alias)
            self._shadow["history"] = self._shadow[f"history_{newest}"]

    def _send_value(self, what: str, value: Any, index: int) -> None:
        fd, path = tempfile.mkstemp(dir=self.temp_dir, suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        self._kernel.run_silent(
            f"{_CELLS}.kernel().load_file({path!r}, {index}, {what!r})", timeout=None
        )

    def _reload_kernel_state(self) -> None:
        """After a kernel restart: contexts and histories are loaded into the new kernel."""
        for name, value in list(self._shadow.items()):
            what, _, index = name.partition("_")
            if index.isdigit():
                self._send_value(what, value, int(index))

    def update_handler_address(self, address: Any) -> None:
        """Point sub-calls at another LMHandler (the reference's persistence API)."""
        self.lm_handler_address = address
        self.handler = _as_endpoint(address)
        if self._closed:
            return
        config = self._channel_config()
        if self._repl is not None:
            from rlm.environments._ipython_channel import RoutedChannel

            old, self._channel = self._channel, RoutedChannel.from_config(config)
            self._repl.channel = self._channel
            old.close()
        elif self._kernel is not None:
            self._kernel.run_silent(
                f"{_CELLS}.kernel().set_channels({json.dumps(config)!r})", timeout=60.0
            )

    # ----------------------------------------------------------------- cells
    def execute_code(self, code: str) -> REPLResult:
        """The reference's name for `execute`."""
        return self.execute(code)

    def execute(self, code: str) -> REPLResult:
        me = threading.get_ident()
        with self._threads_lock:
            if me in self._subcall_threads or me in self._executing_threads:
                raise RuntimeError(
                    "Reentrant execute_code on the same IPythonREPL is not supported: it was "
                    "called from inside a running cell or from its subcall_fn, which would "
                    "deadlock or corrupt that cell's result; use a separate REPL instead"
                )
            self._executing_threads.add(me)
        try:
            with self._lock:
                self._check_open()
                if self._hub is not None:
                    self._hub.begin_cell()
                if self._repl is not None:
                    result = self._execute_in_process(code)
                else:
                    result = self._execute_in_kernel(code)
                if self._hub is not None:
                    result.rlm_calls.extend(self._hub.take_cell_records())
                return result
        finally:
            with self._threads_lock:
                self._executing_threads.discard(me)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the environment was cleaned up")

    def _execute_in_process(self, code: str) -> REPLResult:
        from rlm.runtime.capture import capture
        from rlm.runtime.repl import CellTimeout

        repl = self._repl
        repl.timeout = self.timeout_for_next_cell()  # capped by what the run has left
        started = time.perf_counter()
        with capture(repl.capture_chars) as (out, err):
            repl.begin()
            try:
                outcome = self._shell.run_cell(code, store_history=True)
            except CellTimeout as exc:  # the timer fired outside the statement it guarded
                outcome = types.SimpleNamespace(error_before_exec=None, error_in_exec=exc)
            summary = repl.finish(outcome)
            stdout, dropped, stderr = out.getvalue(), out.dropped + err.dropped, err.getvalue()
        final = summary["final"]
        return REPLResult(
            stdout=stdout,
            stderr=stderr + summary["stderr"] + _dropped_note(dropped, repl.capture_chars),
            locals=summary["locals"],
            execution_time=time.perf_counter() - started,
            final_answer=summary["final_text"] if final else None,
            final_value=repl._final_live if final else None,
            error=summary["error"],
            timed_out=summary["timed_out"],
        )

    def _execute_in_kernel(self, code: str) -> REPLResult:
        kernel = self._kernel
        timeout = self.timeout_for_next_cell()  # capped by what the run has left
        if timeout != self._kernel_timeout:
            kernel.run_silent(f"{_CELLS}.kernel().set_timeout({timeout!r})")
            self._kernel_timeout = timeout
        cap = max(1_000_000, 10 * self.max_output_chars)
        started = time.perf_counter()
        cell = kernel.run_cell(code, timeout, cap)
        summary = cell.summary or {}
        error, timed_out = summary.get("error"), bool(summary.get("timed_out"))
        notes = [summary.get("stderr", "")]
        limit = "its time limit" if timeout is None else f"{timeout:g}s"
        if cell.interrupted and not timed_out:
            timed_out, error = True, f"TimeoutError: cell exceeded {limit}"
            notes = [
                f"{error}: the cell did not stop at its deadline; the kernel was interrupted\n"
            ]
        if cell.restarted or cell.died:
            if cell.died and not cell.interrupted:
                error = "SandboxError: the IPython kernel died during the cell"
            notes.append(
                f"{error}\n[the kernel was restarted: variables were lost; "
                "context_N and history_N were loaded again]\n"
            )
            kernel.run_silent(f"{_CELLS}.kernel().set_timeout({timeout!r})")
            self._kernel_timeout = timeout
            self._reload_kernel_state()
        elif cell.summary is None and error is None:
            error = "SandboxError: the kernel sent no result for the cell"
            notes.extend(cell.notes)
        final = bool(summary.get("final"))
        return REPLResult(
            stdout=cell.stdout,
            stderr=cell.stderr + "".join(notes) + _dropped_note(cell.dropped, cap),
            locals=dict(summary.get("locals") or {}),
            execution_time=time.perf_counter() - started,
            final_answer=summary.get("final_text") if final else None,
            final_value=summary.get("final_value") if final else None,
            error=error,
            timed_out=timed_out,
        )

    # ------------------------------------------------------------- lifecycle
    def cleanup(self) -> None:
        """Stop the kernel or drop the shell, the private handler and temp files. Idempotent."""
        self._closed = True
        kernel, self._kernel = getattr(self, "_kernel", None), None
        if kernel is not None:
            with contextlib.suppress(Exception):
                kernel.shutdown()
        channel, self._channel = getattr(self, "_channel", None), None
        if channel is not None:
            channel.close()
        hub, self._hub = getattr(self, "_hub", None), None
        if hub is not None:
            hub.close()
        shell, self._shell = getattr(self, "_shell", None), None
        if shell is not None:
            # InteractiveShell registers atexit_operations, a strong reference to the shell
            # for the life of the process; unregister it so the shell can be collected.
            atexit.unregister(shell.atexit_operations)
            with contextlib.suppress(Exception):
                shell.reset(new_session=False)
        self._repl = None
        module, self._user_module = getattr(self, "_user_module", None), None
        if module is not None:
            sys.modules.pop(module.__name__, None)
        temp_dir = getattr(self, "temp_dir", None)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def __enter__(self) -> IPythonREPL:
        return self

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()


def _dropped_note(dropped: int, cap: int) -> str:
    if not dropped:
        return ""
    return f"[output truncated: {dropped} chars over the {cap}-char capture cap were dropped]\n"
