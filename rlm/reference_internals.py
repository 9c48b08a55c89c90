"""The reference's private `RLM` methods that its users' code calls: `_subcall`, `_check_timeout`
and `_check_iteration_limits`.

Our own loop does not use them: `rlm_query` runs a child inside the same run (one handler, one
budget, see `RLM._spawn`) and limits are checked by the tree's `Budget`. They exist for code
written against the reference that calls them directly, e.g. a hand-driven REPL given
`subcall_fn=rlm._subcall`, or a test that checks one limit on its own. They keep the
reference's behaviour and arguments, with our exceptions.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from rlm.core.types import RLMChatCompletion, UsageSummary
from rlm.errors import (
    BudgetExceededError,
    ErrorThresholdExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.lm_service.budget import Limits


class ReferenceInternals:
    """Mixed into `RLM`; reads the settings `RLM.__init__` stores."""

    backend: Any  # a backend name, or a BaseLM instance
    backend_kwargs: dict[str, Any]
    environment: str
    environment_kwargs: dict[str, Any]
    setup_code: str | None
    depth: int
    max_depth: int
    max_iterations: int
    max_errors: int | None
    limits: Limits
    custom_system_prompt: str | None
    other_backends: list[str]
    other_backend_kwargs: list[dict[str, Any]]
    logger: Any
    custom_sub_tools: Mapping[str, Any] | None
    max_concurrent_subcalls: int
    on_subcall_start: Callable[..., Any] | None
    on_subcall_complete: Callable[..., Any] | None

    # Set by code that drives `_subcall` itself (the reference sets it when completion starts).
    _completion_start_time: float | None = None
    _consecutive_errors: int = 0
    _last_error: str | None = None

    def _check_timeout(self, iteration: int, time_start: float) -> None:
        """Raise `TimeoutExceededError` when `max_timeout` has passed since `time_start`
        (a `time.perf_counter()` reading)."""
        timeout = self.limits.max_timeout
        if timeout is None:
            return
        elapsed = time.perf_counter() - time_start
        if elapsed > timeout:
            raise TimeoutExceededError(
                elapsed=elapsed,
                timeout=timeout,
                message=(
                    f"Timeout exceeded after iteration {iteration}: "
                    f"{elapsed:.1f}s of {timeout:.1f}s limit"
                ),
            )

    def _check_iteration_limits(self, iteration: Any, iteration_num: int, lm_handler: Any) -> None:
        """After a turn: count consecutive failing turns, then check cost and tokens against
        what `lm_handler.get_usage_summary()` reports."""
        failed = [
            block.result.error or block.result.stderr
            for block in iteration.code_blocks
            if block.result is not None and (block.result.error or block.result.stderr)
        ]
        if failed:
            self._consecutive_errors += 1
            self._last_error = failed[0]
        else:
            self._consecutive_errors = 0
        if self.max_errors is not None and self._consecutive_errors >= self.max_errors:
            raise ErrorThresholdExceededError(
                error_count=self._consecutive_errors,
                threshold=self.max_errors,
                last_error=self._last_error,
            )
        usage = lm_handler.get_usage_summary()
        budget = self.limits.max_budget
        spent = usage.total_cost or 0.0
        if budget is not None and spent > budget:
            raise BudgetExceededError(spent=spent, budget=budget)
        limit = self.limits.max_tokens
        used = usage.total_input_tokens + usage.total_output_tokens
        if limit is not None and used > limit:
            raise TokenLimitExceededError(tokens_used=used, token_limit=limit)

    def _subcall(self, prompt: str, model: str | None = None) -> RLMChatCompletion:
        """A child RLM one level down (a plain LM call at `max_depth`), as a completion.

        `model` replaces the child's `model_name`. Failures come back as an "Error: ..."
        response, as in the reference; the caller's kwargs are never changed.
        """
        names = _defining_namespace(self)  # its RLM / get_client: the names users patch
        next_depth = self.depth + 1
        kwargs = dict(self.backend_kwargs)
        if model is not None:
            kwargs["model_name"] = model
        name = str(model or kwargs.get("model_name") or "unknown")
        started = time.perf_counter()

        def failed(message: str) -> RLMChatCompletion:
            return RLMChatCompletion(
                root_model=name,
                prompt=prompt,
                response=f"Error: {message}",
                usage_summary=UsageSummary(),
                execution_time=time.perf_counter() - started,
            )

        if next_depth >= self.max_depth:
            if self.other_backends and model is None:
                backend, leaf_kwargs = self.other_backends[0], self.other_backend_kwargs[0]
            else:
                backend, leaf_kwargs = self.backend, kwargs
            try:
                client = names["get_client"](backend, leaf_kwargs)
                reply = client.completion(prompt)
            except Exception as exc:
                return failed(f"LM query failed at max depth - {exc}")
            text = reply if isinstance(reply, str) else str(getattr(reply, "text", reply))
            return RLMChatCompletion(
                root_model=name,
                prompt=prompt,
                response=text,
                usage_summary=UsageSummary(),
                execution_time=time.perf_counter() - started,
            )

        timeout = self.limits.max_timeout
        remaining: float | None = None
        if timeout is not None and self._completion_start_time is not None:
            elapsed = time.perf_counter() - self._completion_start_time
            remaining = timeout - elapsed
            if remaining <= 0:
                return failed(f"Timeout exhausted ({elapsed:.1f}s of {timeout:.1f}s)")
        preview = prompt[:80]
        _notify(self.on_subcall_start, next_depth, name, preview)
        error: str | None = None
        from rlm.logger import RLMLogger

        child = names["RLM"](
            backend=self.backend,
            backend_kwargs=kwargs,
            environment=self.environment,
            environment_kwargs=_with_setup(self.environment_kwargs, self.setup_code),
            depth=next_depth,
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            max_budget=self.limits.max_budget,
            max_timeout=remaining,
            max_tokens=self.limits.max_tokens,
            max_errors=self.max_errors,
            custom_system_prompt=self.custom_system_prompt,
            other_backends=self.other_backends or None,
            other_backend_kwargs=self.other_backend_kwargs or None,
            logger=RLMLogger() if self.logger is not None else None,
            verbose=False,
            custom_tools=self.custom_sub_tools,
            custom_sub_tools=self.custom_sub_tools,
            max_concurrent_subcalls=self.max_concurrent_subcalls,
            on_subcall_start=self.on_subcall_start,
            on_subcall_complete=self.on_subcall_complete,
        )
        try:
            result: RLMChatCompletion = child.completion(prompt, root_prompt=None)
            return result
        except Exception as exc:
            error = str(exc)
            return failed(f"Child RLM completion failed - {exc}")
        finally:
            child.close()
            duration = time.perf_counter() - started
            _notify(self.on_subcall_complete, next_depth, name, duration, error)


def _defining_namespace(rlm: object) -> dict[str, Any]:
    """The globals of the module that defines `RLM` (even after a reload made a new one)."""
    for klass in type(rlm).__mro__:
        init = klass.__dict__.get("__init__")
        if klass.__name__ == "RLM" and init is not None:
            namespace: dict[str, Any] = init.__globals__
            return namespace
    return vars(sys.modules["rlm.core.rlm"])


def _with_setup(kwargs: Mapping[str, Any], setup_code: str | None) -> dict[str, Any]:
    return {**kwargs, "setup_code": setup_code} if setup_code is not None else dict(kwargs)


def _notify(callback: Callable[..., Any] | None, *args: Any) -> None:
    """A user callback; its failure never breaks the run (as in the reference)."""
    if callback is None:
        return
    with contextlib.suppress(Exception):  # a callback's bug is the caller's; the run goes on
        callback(*args)
