"""`LocalREPL`: cells run in this process, in the calling thread.

Fast and dependency-free, and NOT a sandbox: code in a cell can do anything this process can
(read files, environment variables, import anything). Use it for trusted code; the isolated
environments ("process", "docker", ...) run the same runtime in a separate process.

Constructed by `RLM` with a link to its LM service (or by hand with a `HandlerEndpoint`), or
by hand as in the reference
(`LocalREPL(lm_handler_address=handler.address, context_payload=..., setup_code=...,
custom_tools=...)`, then `execute_code`, `locals`, `add_context`, `cleanup`). Unlike the
reference, cells do not `chdir` into `temp_dir` (the working directory is process-wide, so one
REPL's cell would move every other thread's file I/O); `temp_dir` is there for code that wants
a scratch folder.

Output is captured per thread (`rlm.runtime.capture`), so several LocalREPLs can run cells at
once in different threads. The cell timeout is enforced by a watchdog thread that injects
`CellTimeout` into the running thread. Python checks for such an exception only between
bytecodes, so a call blocked inside C (``time.sleep(10**6)``, a blocking socket read) cannot be
interrupted in-process, and neither can code that catches `BaseException` and carries on; the
"process" environment kills its worker instead.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from rlm.core.types import Message, REPLResult
from rlm.environments._reference import HandlerLease, ReferenceREPLMethods, split_custom_tools
from rlm.environments.base import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MAX_OUTPUT_CHARS,
    Handler,
    LMLink,
    ToolSpec,
)
from rlm.environments.base_env import NonIsolatedEnv
from rlm.environments.link import open_link
from rlm.environments.watchdog import Watchdog
from rlm.errors import ConfigurationError, ContextLoadError, SandboxError
from rlm.runtime.jsondata import json_copy
from rlm.runtime.repl import Repl


class _TimedRepl(Repl):
    """A Repl whose cells are bracketed by a watchdog."""

    timeout: float | None = None
    _watchdog: Watchdog | None = None

    def cell_started(self) -> None:
        if self.timeout is not None:
            self._watchdog = Watchdog(threading.get_ident(), self.timeout)

    def cell_finished(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.disarm()


class _SubcallFnRunner:
    """`rlm_query` / `rlm_query_batched` served by a user's `subcall_fn(prompt, model)`.

    The reference's LocalREPL takes such a callback (returning an `RLMChatCompletion`) when it
    is driven by hand; `RLM` never passes one (its child runs go through the LM service). A
    failed call answers "Error: ..." to the code and is left out of `rlm_calls`; a batch runs
    at most `max_concurrent` calls at once and records them in prompt order.
    """

    def __init__(self, fn: Callable[..., Any], max_concurrent: int) -> None:
        self.fn = fn
        self.max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._calls: list[Any] = []

    def _one(self, prompt: Any, model: str | None) -> tuple[str, Any]:
        try:
            completion = self.fn(prompt, model)
        except Exception as exc:
            return f"Error: {type(exc).__name__}: {exc}", None
        return str(getattr(completion, "response", completion)), completion

    def _keep(self, completions: list[Any]) -> None:
        with self._lock:
            self._calls.extend(c for c in completions if c is not None)

    def query(self, prompt: Any, model: str | None = None) -> str:
        text, completion = self._one(prompt, model)
        self._keep([completion])
        return text

    def batched(self, prompts: list[Any], model: str | None = None) -> list[str]:
        prompts = list(prompts)
        if len(prompts) <= 1:
            results = [self._one(p, model) for p in prompts]
        else:
            workers = min(self.max_concurrent, len(prompts))
            with concurrent.futures.ThreadPoolExecutor(workers, "rlm-subcall-fn") as pool:
                results = list(pool.map(lambda p: self._one(p, model), prompts))
        self._keep([completion for _, completion in results])
        return [text for text, _ in results]

    def take(self) -> list[Any]:
        with self._lock:
            calls, self._calls = self._calls, []
        return calls


_ACCEPTED = (
    "handler",
    "depth",
    "timeout",
    "max_output_chars",
    "tools",
    "lm_handler_address",
    "context_payload",
    "setup_code",
    "persistent",
    "subcall_fn",
    "custom_tools",
    "custom_sub_tools",
    "compaction",
    "max_concurrent_subcalls",
)


class LocalREPL(ReferenceREPLMethods, NonIsolatedEnv):
    """Runs cells in-process. Not a security boundary (see the module docstring).

    Our keywords (`RLM` passes them): `handler`, `depth`, `timeout`, `max_output_chars`,
    `tools`. The reference's: `lm_handler_address` (an LMHandler this process started),
    `context_payload`, `setup_code` (run once; a failure is a ConfigurationError),
    `custom_tools` (bound directly: this REPL is in-process anyway), `persistent` (this REPL
    always keeps its namespace while it lives), `compaction` (binds `history` from the start),
    `subcall_fn(prompt, model)` (serves `rlm_query` when the REPL is driven by hand) and
    `max_concurrent_subcalls` (how many of its calls a batch runs at once).
    """

    name = "local"
    isolated = False

    def __init__(
        self,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 0,
        subcall_fn: Callable[..., Any] | None = None,
        custom_tools: Mapping[str, Any] | None = None,
        custom_sub_tools: Mapping[str, Any] | None = None,
        compaction: bool = False,
        max_concurrent_subcalls: int = 4,
        *,
        handler: Handler | None = None,
        timeout: float | None = DEFAULT_CELL_TIMEOUT,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        tools: Mapping[str, ToolSpec] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"unknown keyword argument(s) for environment 'local': {', '.join(sorted(unknown))}"
                f"; accepted: {', '.join(_ACCEPTED)}"
            )
        if handler is not None and lm_handler_address is not None:
            raise ConfigurationError("pass either handler or lm_handler_address, not both")
        if isinstance(max_concurrent_subcalls, bool) or not (
            isinstance(max_concurrent_subcalls, int) and max_concurrent_subcalls >= 1
        ):
            raise ConfigurationError(
                f"max_concurrent_subcalls must be an int >= 1, got {max_concurrent_subcalls!r}"
            )
        del persistent, custom_sub_tools  # see the class docstring
        self.max_concurrent_subcalls = max_concurrent_subcalls
        super().__init__(
            handler=handler,
            depth=depth,
            timeout=timeout,
            max_output_chars=max_output_chars,
            tools=tools,
        )
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds or None, got {self.timeout!r}"
            )
        if self.max_output_chars <= 0:
            raise ConfigurationError(
                f"max_output_chars must be positive, got {self.max_output_chars}"
            )
        self._init_reference_state()
        callables, specs = split_custom_tools(custom_tools)
        self.lm_handler_address = lm_handler_address
        self._lease: HandlerLease | None = None
        self._channel: LMLink | None = None
        self._connect(lm_handler_address)
        repl_tools = {
            name: {"description": spec.description, "callable": spec.callable, "value": spec.value}
            for name, spec in self.tools.items()
        }
        for name, spec in specs.items():  # in-process: the user's own objects, bound as they are
            value = callables.get(name, spec.value)
            repl_tools[name] = {"description": spec.description, "callable": False, "value": value}
        self._repl = _TimedRepl(
            self._channel,
            depth=self.depth,
            capture_chars=max(1_000_000, 10 * self.max_output_chars),
            tools=repl_tools,
        )
        self._repl.timeout = self.timeout
        self._subcalls: _SubcallFnRunner | None = None
        if subcall_fn is not None:
            self._subcalls = _SubcallFnRunner(subcall_fn, max_concurrent_subcalls)
            helpers = {
                "rlm_query": self._subcalls.query,
                "rlm_query_batched": self._subcalls.batched,
            }
            self._repl._reserved.update(helpers)  # restored after every cell like the others
            self._repl.namespace.update(helpers)
        self._lock = threading.Lock()  # one cell at a time: the namespace is shared
        self._closed = False
        self._temp_dir: str | None = None
        if compaction:
            self._repl.namespace["history"] = []
        if context_payload is not None:
            self.load_context(context_payload)
        if setup_code:
            result = self.execute(setup_code)
            if result.error is not None or result.timed_out:
                self.cleanup()
                raise ConfigurationError(f"setup_code failed: {result.stderr.strip()}")

    def _connect(self, address: tuple[str, int] | None) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._lease is not None:
            self._lease.close()
        self._lease = None
        if address is not None:
            self._lease = HandlerLease(address)
            self._channel = self._lease
        else:
            self._channel = open_link(self.handler)
        if hasattr(self, "_repl"):
            self._repl.channel = self._channel

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Send later `llm_query` calls to the LMHandler this process started at `address`."""
        self.lm_handler_address = (str(address[0]), int(address[1]))
        self._connect(self.lm_handler_address)

    def __enter__(self) -> LocalREPL:
        return self

    @property
    def namespace(self) -> dict[str, Any]:
        """The live namespace (for inspection and tests)."""
        return self._repl.namespace

    @property
    def locals(self) -> dict[str, Any]:
        """The live namespace, under the reference's name (empty after `cleanup`)."""
        return self._repl.namespace

    @property
    def temp_dir(self) -> str:
        """A scratch folder of this REPL, made on first use and removed by `cleanup`."""
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="rlm_repl_")
        return self._temp_dir

    def load_context(self, context: Any, index: int = 0) -> None:
        """Bind a deep copy of `context` as `context_{index}` (and `context` for index 0)."""
        value = json_copy(context, "context", error=ContextLoadError)
        self._repl.load_context(value, index)
        self._note_context(index)

    def add_history(self, history: list[Message], index: int | None = None) -> int:  # type: ignore[override]
        """Bind a copy of `history` as `history_{index}` (the next free index by default)."""
        index = self._next_history_index(index)
        self._repl.add_history(json_copy(history, "history", error=ContextLoadError), index)
        self._note_history(index)
        return index

    def execute(self, code: str) -> REPLResult:
        if self._closed:
            raise SandboxError("the environment was cleaned up")
        with self._lock:
            timeout = self.timeout_for_next_cell()
            self._repl.timeout = timeout
            cell = self._repl.run_cell(code, timeout_label=timeout)
            rlm_calls = self._subcalls.take() if self._subcalls is not None else []
            if self._lease is not None:  # driven by hand: the calls it made, reference-shaped
                rlm_calls += self._lease.take_calls()
        return REPLResult(
            stdout=cell.stdout,
            stderr=cell.stderr,
            locals=cell.locals,
            execution_time=cell.duration,
            final_answer=cell.final_text if cell.final else None,
            final_value=cell.final_value if cell.final else None,
            error=cell.error,
            timed_out=cell.timed_out,
            rlm_calls=rlm_calls,
        )

    def cleanup(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        if self._lease is not None:
            self._lease.close()
        if hasattr(self, "_repl"):
            self._repl.namespace.clear()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
