"""The REPL every environment runs: one live namespace, the helpers, final answers.

`Repl` is used in-process by `LocalREPL` and shipped into the sandboxes (a child process,
Docker, Modal, E2B), so every environment gives the model the same namespace semantics and the
same helpers. Every sub-call a helper makes is one request to the host's LM service.

The namespace is ONE dict used as the globals of every cell: functions see names assigned by
later cells, a cell that raises keeps what it assigned before the error, and `del` persists.
`__builtins__` is the real builtins module. This is not a security boundary and does not
pretend to be; isolation is the sandbox's job.

Standard library only (plus `rlm.errors` and sibling runtime modules).
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import keyword
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlm.errors import RemoteError

from .capture import capture
from .jsondata import check_json, safe_str, to_jsonable
from .tracebacks import format_cell_exception

_WAIT_SLICE = 0.2  # blocking waits wake this often, so an injected CellTimeout gets through

HELPER_NAMES = (
    "llm_query",
    "llm_query_batched",
    "llm_query_async",
    "rlm_query",
    "rlm_query_batched",
    "SHOW_VARS",
    "FINAL",
    "FINAL_VAR",
)


class CellTimeout(BaseException):
    """Injected into a running cell by the caller (a watchdog thread or a signal handler)."""


class _FinalSignal(BaseException):
    """Raised by FINAL/FINAL_VAR to stop the cell; the answer is recorded before raising."""


@dataclass
class CellResult:
    """What one cell did. `final_json` is a JSON-compatible copy of `final_value`."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    final: bool = False
    final_value: Any = None
    final_json: Any = None
    final_text: str | None = None
    locals: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    timed_out: bool = False
    dropped_chars: int = 0


def _check_prompt(func: str, prompt: Any, what: str = "prompt") -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt
    ):
        return
    raise TypeError(
        f"{func}(): {what} must be a str or a list of {{'role': ..., 'content': ...}} messages, "
        f"not {type(prompt).__name__}"
    )


def _check_model(func: str, model: Any) -> None:
    if model is not None and not isinstance(model, str):
        raise TypeError(f"{func}(): model must be a str naming a model, or None")


def _check_prompts(func: str, prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, dict)) or not isinstance(prompts, (list, tuple)):
        raise TypeError(
            f"{func}(): prompts must be a list of prompts, not {type(prompts).__name__}"
        )
    for i, prompt in enumerate(prompts):
        _check_prompt(func, prompt, f"prompts[{i}]")
    return list(prompts)


def _check_json(func: str, value: Any, where: str) -> None:
    """Raise TypeError unless `value` can cross the channel as JSON data."""
    check_json(value, f"{func}(): {where}", error=TypeError)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"Error: {exc.error_type}: {exc.message}"
    return f"Error: {type(exc).__name__}: {exc}"


def _item_text(item: Any) -> str:
    """One slot of a batch response: its text, or its error as a string."""
    if isinstance(item, dict):
        error = item.get("error")
        if isinstance(error, dict):
            return f"Error: {error.get('type', 'RemoteError')}: {error.get('message', '')}"
        result = item.get("result")
        if isinstance(result, dict) and isinstance(result.get("text"), str):
            return str(result["text"])
    return f"Error: ProtocolError: malformed batch item {item!r:.200}"


def _sleep_until_done(future: concurrent.futures.Future[Any], timeout: float | None) -> None:
    """Wait in short slices: a blocking C-level wait would never see an injected CellTimeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
        if left <= 0:
            return
        concurrent.futures.wait([future], left)


class _TextFuture(concurrent.futures.Future[str]):
    """The future `llm_query_async` returns; its `result()` can be interrupted by a timeout."""

    def result(self, timeout: float | None = None) -> str:
        _sleep_until_done(self, timeout)
        return super().result(0)


def _wait(future: concurrent.futures.Future[Any]) -> Any:
    _sleep_until_done(future, None)
    return future.result()


class Repl:
    """One live namespace and the helpers; `run_cell` runs code in it.

    Subclasses may override `cell_started`/`cell_finished` to arm and disarm a cell timeout
    (they bracket exactly the user code, inside the handler that turns `CellTimeout` into a
    timed-out result).
    """

    def __init__(
        self,
        channel: Any = None,
        *,
        depth: int = 0,
        capture_chars: int = 1_000_000,
        tools: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.channel = channel
        self.depth = depth
        self.capture_chars = capture_chars
        self.cell_count = 0
        self._sources: dict[str, list[str]] = {}
        self._final: tuple[Any] | None = None
        self.namespace: dict[str, Any] = {
            "__name__": "__main__",
            "__doc__": None,
            "__builtins__": builtins,
            "answer": {"content": "", "ready": False},
        }
        self._reserved: dict[str, Any] = {
            "llm_query": self._llm_query,
            "llm_query_batched": self._llm_query_batched,
            "llm_query_async": self._llm_query_async,
            "rlm_query": self._rlm_query,
            "rlm_query_batched": self._rlm_query_batched,
            "SHOW_VARS": self._show_vars,
            "FINAL": self._final_fn,
            "FINAL_VAR": self._final_var,
        }
        for name, spec in (tools or {}).items():
            self._add_tool(name, spec)
        self.namespace.update(self._reserved)

    # ----------------------------------------------------------------- state
    def _add_tool(self, name: str, spec: Mapping[str, Any]) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"tool name {name!r} is not a Python identifier")
        if (
            name in self._reserved
            or name in ("context", "history", "answer")
            or name.startswith(("context_", "history_", "__"))
        ):
            raise ValueError(f"tool name {name!r} is reserved by the REPL; choose another")
        if not spec.get("callable", True):
            self._reserved[name] = spec.get("value")
            return

        def tool(*args: Any, **kwargs: Any) -> Any:
            return self._tool_call(name, args, kwargs)

        tool.__name__ = tool.__qualname__ = name
        tool.__doc__ = str(spec.get("description") or f"Custom tool {name!r} (runs on the host).")
        self._reserved[name] = tool

    def load_context(self, value: Any, index: int = 0) -> None:
        """Bind `context_{index}` (and `context` when index is 0).

        A new context starts a new task: `answer` is reset, so a persistent session's next
        completion does not end on the previous one's answer.
        """
        self.namespace["answer"] = {"content": "", "ready": False}
        self._reserved[f"context_{index}"] = value
        self.namespace[f"context_{index}"] = value
        if index == 0:
            self._reserved["context"] = value
            self.namespace["context"] = value

    def add_history(self, messages: Any, index: int) -> None:
        """Bind `history_{index}`; `history` is the one with the highest index."""
        self._reserved[f"history_{index}"] = messages
        self.namespace[f"history_{index}"] = messages
        indices = [int(k[8:]) for k in self._reserved if k.startswith("history_")]
        newest = self._reserved[f"history_{max(indices)}"]
        self._reserved["history"] = newest
        self.namespace["history"] = newest

    def get(self, name: str) -> Any:
        return self.namespace[name]

    def user_variables(self) -> dict[str, str]:
        """User variable name -> type name (helpers, reserved names, dunders, modules hidden)."""
        return {
            name: type(value).__name__
            for name, value in self.namespace.items()
            if not (name.startswith("__") and name.endswith("__"))
            and name not in self._reserved
            and name != "answer"
            and not isinstance(value, types.ModuleType)
        }

    # ----------------------------------------------------------------- hooks
    def cell_started(self) -> None:
        """Called right before user code runs (arm a timeout here)."""

    def cell_finished(self) -> None:
        """Called right after user code stopped; must leave no `CellTimeout` pending."""

    # ----------------------------------------------------------------- cells
    def run_cell(self, code: str, *, timeout_label: float | None = None) -> CellResult:
        """Run one cell in the namespace; errors in the code end up in the result, not raised."""
        self.cell_count += 1
        filename = f"<cell {self.cell_count}>"
        self._sources[filename] = code.splitlines()
        self._final = None
        result = CellResult()
        started = time.perf_counter()
        notes: list[str] = []
        with capture(self.capture_chars) as (out, err):
            try:
                try:
                    self.cell_started()
                    self._exec(code, filename)
                finally:
                    self.cell_finished()
            except _FinalSignal:
                pass
            except CellTimeout as exc:
                result.timed_out = True
                limit = "its time limit" if timeout_label is None else f"{timeout_label:g}s"
                result.error = f"TimeoutError: cell exceeded {limit}"
                # Where the cell was when it was stopped, then the reason instead of CellTimeout.
                where = self._format_exception(exc).splitlines(keepends=True)[:-1]
                notes.append("".join(where) + f"{result.error} and was stopped\n")
            except BaseException as exc:  # SystemExit, KeyboardInterrupt, ...: end the cell only
                message = safe_str(exc)
                result.error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
                notes.append(self._format_exception(exc))
            result.stdout = out.getvalue()
            result.dropped_chars = out.dropped + err.dropped
            captured_err = err.getvalue()
        notes.extend(self._restore_reserved())
        self._check_answer()
        if self._final is not None:
            value = self._final[0]
            result.final = True
            result.final_value = value
            result.final_json = to_jsonable(value)
            result.final_text = value if isinstance(value, str) else safe_str(value)
        if result.dropped_chars:
            notes.append(
                f"[output truncated: {result.dropped_chars} chars over the "
                f"{self.capture_chars}-char capture cap were dropped]\n"
            )
        result.stderr = captured_err + "".join(notes)
        result.locals = self.user_variables()
        result.duration = time.perf_counter() - started
        return result

    def _exec(self, code: str, filename: str) -> None:
        tree = ast.parse(code, filename, "exec")
        last: ast.Expression | None = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = ast.Expression(tail.value)
        exec(compile(tree, filename, "exec"), self.namespace)
        if last is not None:
            value = eval(compile(last, filename, "eval"), self.namespace)
            if value is not None:
                print(repr(value))

    def _restore_reserved(self) -> list[str]:
        notes = []
        for name, value in self._reserved.items():
            if self.namespace.get(name, _MISSING) is not value:
                self.namespace[name] = value
                notes.append(
                    f"Note: {name!r} is a reserved name of the REPL and was restored; "
                    f"use another name for your variable (e.g. 'my_{name.lower()}').\n"
                )
        return notes

    def _check_answer(self) -> None:
        answer = self.namespace.get("answer")
        if self._final is None and isinstance(answer, dict) and answer.get("ready"):
            self._final = (answer.get("content"),)

    def _format_exception(self, exc: BaseException) -> str:
        """Traceback of user code: cell line numbers and source, runtime frames removed, and
        the middle of a very long one left out."""
        return format_cell_exception(exc, self._sources)

    # --------------------------------------------------------------- helpers
    def _submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[Any]:
        if self.channel is None:
            raise ConnectionError("no LM handler is connected to this REPL")
        future: concurrent.futures.Future[Any] = self.channel.submit(payload)
        return future

    def _call(self, payload: dict[str, Any]) -> Any:
        """Send one request and wait; the result dict, or the error as an exception."""
        return _wait(self._submit(payload))

    @staticmethod
    def _with_model(payload: dict[str, Any], model: str | None) -> dict[str, Any]:
        if model is not None:
            payload["model"] = model
        return payload

    def _llm_query(self, prompt: Any, model: str | None = None) -> str:
        """Ask a sub-LM; returns its text, or "Error: <Type>: <message>"."""
        _check_prompt("llm_query", prompt)
        _check_model("llm_query", model)
        try:
            result = self._call(self._with_model({"type": "llm", "prompt": prompt}, model))
            return str(result["text"])
        except Exception as exc:
            return _error_text(exc)

    def _llm_query_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        """Ask a sub-LM several prompts concurrently; one text (or error string) per prompt."""
        items = _check_prompts("llm_query_batched", prompts)
        _check_model("llm_query_batched", model)
        if not items:
            return []
        return self._batch(
            self._with_model({"type": "llm_batch", "prompts": items}, model), len(items)
        )

    def _llm_query_async(
        self, prompt: Any, model: str | None = None
    ) -> concurrent.futures.Future[str]:
        """Start a sub-LM call without waiting; `.result()` gives the text or an error string."""
        _check_prompt("llm_query_async", prompt)
        _check_model("llm_query_async", model)
        out: concurrent.futures.Future[str] = _TextFuture()
        out.set_running_or_notify_cancel()
        try:
            inner = self._submit(self._with_model({"type": "llm", "prompt": prompt}, model))
        except Exception as exc:
            out.set_result(_error_text(exc))
            return out

        def done(f: concurrent.futures.Future[Any]) -> None:
            try:
                out.set_result(str(f.result()["text"]))
            except Exception as exc:
                out.set_result(_error_text(exc))

        inner.add_done_callback(done)
        return out

    def _rlm_query(self, prompt: Any, model: str | None = None, *, context: Any = None) -> str:
        """Run a child RLM on `prompt` (and its own `context`); returns its answer text."""
        _check_prompt("rlm_query", prompt)
        _check_model("rlm_query", model)
        _check_json("rlm_query", context, "context")
        payload = {"type": "rlm", "prompt": prompt, "context": context}
        try:
            return str(self._call(self._with_model(payload, model))["text"])
        except Exception as exc:
            return _error_text(exc)

    def _rlm_query_batched(
        self, prompts: Any, model: str | None = None, *, contexts: Any = None
    ) -> list[str]:
        """Run child RLMs concurrently; one answer (or error string) per prompt."""
        items = _check_prompts("rlm_query_batched", prompts)
        _check_model("rlm_query_batched", model)
        if contexts is not None:
            if not isinstance(contexts, (list, tuple)) or len(contexts) != len(items):
                raise TypeError("rlm_query_batched(): contexts must be a list as long as prompts")
            _check_json("rlm_query_batched", list(contexts), "contexts")
            contexts = list(contexts)
        if not items:
            return []
        payload = {"type": "rlm_batch", "prompts": items, "contexts": contexts}
        return self._batch(self._with_model(payload, model), len(items))

    def _batch(self, payload: dict[str, Any], n: int) -> list[str]:
        try:
            results = self._call(payload)["results"]
        except Exception as exc:
            return [_error_text(exc)] * n
        if not isinstance(results, list) or len(results) != n:
            return [f"Error: ProtocolError: expected {n} results from the handler"] * n
        return [_item_text(item) for item in results]

    def _tool_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        _check_json(name, list(args), "args")
        _check_json(name, kwargs, "kwargs")
        payload = {"type": "tool", "name": name, "args": list(args), "kwargs": kwargs}
        try:
            return self._call(payload)["value"]
        except Exception as exc:
            return _error_text(exc)

    def _show_vars(self) -> dict[str, str]:
        """Print and return the user's variables with their type names."""
        variables = self.user_variables()
        if variables:
            print("Variables: " + ", ".join(f"{k} ({v})" for k, v in variables.items()))
        else:
            print("No variables defined yet.")
        return variables

    def _final_fn(self, value: Any) -> None:
        """Give `value` as the final answer and stop the cell."""
        if self._final is None:
            self._final = (value,)
        raise _FinalSignal

    def _final_var(self, name_or_value: Any) -> None:
        """Final answer = the variable named by a str, or the value itself; stops the cell."""
        if isinstance(name_or_value, str):
            name = name_or_value.strip()
            if name not in self.namespace:
                raise NameError(
                    f"FINAL_VAR({name_or_value!r}): no variable named {name!r} exists; "
                    "assign it first, or use FINAL(text) to answer with a literal string"
                )
            name_or_value = self.namespace[name]
        self._final_fn(name_or_value)


_MISSING = object()
