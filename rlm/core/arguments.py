"""What `RLM(...)` accepts: checks of its arguments and of a context, and the error a limit
raises out of `completion()`.

Kept apart from `rlm.core.rlm` so the class reads as the run it drives.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rlm.core.types import RLMChatCompletion
from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    ContextLoadError,
    ErrorThresholdExceededError,
    LimitExceededError,
    SubcallLimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.lm_service.budget import Budget
from rlm.runtime.jsondata import MAX_DEPTH, check_json

MAX_CONTEXT_DEPTH = MAX_DEPTH  # the nesting every environment's loader accepts


def validate_context(value: Any) -> None:
    """A context must be JSON data (str, numbers, lists, dicts): every environment can load it.

    Walks the value instead of serialising it, so a 100 MB string costs nothing to check. A
    container that holds itself (`a = []; a.append(a)`) or nesting deeper than
    `MAX_CONTEXT_DEPTH` is refused at once: neither can be sent to an environment. The walker
    is `rlm.runtime.jsondata`'s, the one every environment loads contexts with.
    """
    check_json(value, "the prompt (loaded as `context`)", error=ContextLoadError)


def limit_error(
    completion: RLMChatCompletion, budget: Budget, max_errors: int | None
) -> LimitExceededError | None:
    """The exception a run stopped by a limit raises, carrying its completion; else None."""
    partial = completion.response or None
    limits = budget.limits
    reason = completion.stop_reason
    if reason == "max_timeout":
        return TimeoutExceededError(
            elapsed=time.monotonic() - budget.started,
            timeout=limits.max_timeout or 0.0,
            partial_answer=partial,
            completion=completion,
        )
    if reason == "max_tokens":
        return TokenLimitExceededError(
            tokens_used=budget.tokens,
            token_limit=limits.max_tokens or 0,
            partial_answer=partial,
            completion=completion,
        )
    if reason == "max_budget":
        return BudgetExceededError(
            spent=budget.cost,
            budget=limits.max_budget or 0.0,
            partial_answer=partial,
            completion=completion,
        )
    if reason == "max_subcalls":
        return SubcallLimitExceededError(
            subcalls=budget.subcalls,
            limit=limits.max_subcalls or 0,
            partial_answer=partial,
            completion=completion,
        )
    if reason == "max_errors":
        return ErrorThresholdExceededError(
            error_count=max_errors or 0,
            threshold=max_errors or 0,
            last_error=completion.error,
            partial_answer=partial,
            completion=completion,
        )
    return None


def with_sampling_args(
    backend: Any,
    backend_kwargs: Mapping[str, Any] | None,
    other_backends: Sequence[str] | None,
    other_backend_kwargs: Sequence[Mapping[str, Any]] | None,
    sampling_args: Mapping[str, Any] | None,
    sub_sampling_args: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """Fold `sampling_args` / `sub_sampling_args` into the clients' kwargs (new dicts).

    `sub_sampling_args` without `other_backends` mirrors the root backend for sub-calls, so
    depth-1 calls get their own sampling while going to the same model.
    """
    root = dict(backend_kwargs or {})
    others = list(other_backends or [])
    other_kwargs = [dict(kw or {}) for kw in (other_backend_kwargs or [{} for _ in others])]
    if sampling_args is not None:
        root["sampling_args"] = {**(root.get("sampling_args") or {}), **sampling_args}
    if sub_sampling_args is not None:
        if not others:
            others, other_kwargs = [backend], [dict(root)]
        first = other_kwargs[0] if other_kwargs else {}
        first["sampling_args"] = {**(first.get("sampling_args") or {}), **sub_sampling_args}
        other_kwargs[:1] = [first]
    return root, others, other_kwargs


def check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
