"""Checking what an environment asks the LM service for, and shaping its errors.

A request comes from code the host does not trust (a sandbox's cells), so every field is
checked before use, and only sampling arguments that cannot change who is called or at what
price pass (`WIRE_SAMPLING_KEYS`). Errors go back as {"type", "message"}, the type being the
exception's class name, so the REPL helper raises it again under the same name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from rlm.core.types import Prompt, to_messages
from rlm.errors import ProtocolError, RemoteError, RLMError, error_type_name

logger = logging.getLogger("rlm.lm_service.service")

MAX_ERROR_MESSAGE_CHARS = 10_000
WIRE_SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "reasoning_effort",
    }
)


class ToolFailure(Exception):
    """An exception raised by a user tool: reported with its own type, not logged as a bug."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


def error_payload(exc: BaseException) -> dict[str, str]:
    """An exception as the {"type", "message"} a request's caller gets back."""
    if isinstance(exc, ToolFailure):
        exc = exc.original
    if isinstance(exc, RemoteError):
        kind, message = exc.error_type, exc.message
    else:
        kind, message = error_type_name(exc), str(exc)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "... [truncated]"
    return {"type": kind, "message": message}


def log_failure(exc: BaseException, what: str) -> None:
    """Expected failures (ours, a tool's) at debug level; anything else is a bug: logged."""
    if isinstance(exc, ToolFailure):
        logger.debug("%s failed in the tool: %s: %s", what, error_type_name(exc.original), exc)
    elif isinstance(exc, RLMError):
        logger.debug("%s failed: %s: %s", what, error_type_name(exc), exc)
    else:
        logger.error("unexpected error serving %s", what, exc_info=exc)


def prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(message.get("content", "")) for message in prompt)


def check_prompt(value: Any, what: str = "prompt") -> Prompt:
    if isinstance(value, str):
        return value
    try:
        to_messages(value)
    except TypeError:
        raise ProtocolError(
            f"{what} must be a string or a list of {{'role', 'content'}} messages"
        ) from None
    result: list[dict[str, Any]] = value
    return result


def optional_model(message: Mapping[str, Any]) -> str | None:
    model = message.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError("'model' must be a string")
    return model


def wire_sampling(message: Mapping[str, Any]) -> dict[str, Any]:
    sampling = message.get("sampling")
    if sampling is None:
        return {}
    if not isinstance(sampling, dict):
        raise ProtocolError("'sampling' must be an object")
    unknown = sorted(set(sampling) - WIRE_SAMPLING_KEYS)
    if unknown:
        raise ProtocolError(
            f"sampling arguments not allowed from a sandbox: {unknown}; "
            f"allowed: {sorted(WIRE_SAMPLING_KEYS)}"
        )
    for key, value in sampling.items():
        if not _SAMPLING_CHECKS[key](value):
            raise ProtocolError(f"sampling argument {key!r} has a bad value: {value!r:.80}")
    return dict(sampling)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e6 < value < 1e6


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 10_000_000


def _stop(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 1000
    return (
        isinstance(value, list)
        and len(value) <= 16
        and all(isinstance(v, str) and len(v) <= 1000 for v in value)
    )


_SAMPLING_CHECKS = {
    "temperature": _number,
    "top_p": _number,
    "top_k": _count,
    "max_tokens": _count,
    "max_completion_tokens": _count,
    "max_output_tokens": _count,
    "stop": _stop,
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63,
    "presence_penalty": _number,
    "frequency_penalty": _number,
    "reasoning_effort": lambda v: isinstance(v, str) and len(v) <= 32,
}


def list_field(message: Mapping[str, Any], name: str) -> list[Any]:
    value = message.get(name)
    if not isinstance(value, list):
        raise ProtocolError(f"{name!r} must be a list")
    return value


def with_context(prompt: Prompt, context: Any) -> Prompt:
    """A plain LM call standing in for a child RLM: the context goes after the prompt, as text."""
    text = (
        context
        if isinstance(context, str)
        else json.dumps(context, ensure_ascii=False, default=str)
    )
    if isinstance(prompt, str):
        return f"{prompt}\n\n{text}"
    return [*prompt, {"role": "user", "content": text}]
