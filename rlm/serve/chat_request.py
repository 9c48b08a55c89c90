"""An OpenAI chat-completions request body, checked and turned into one RLM run's input.

What an OpenAI-compatible server must get right is what it does with fields it cannot honour.
Here every top-level field is in exactly one of three sets:

- used: `model`, `messages`, `stream`, `stream_options`, the RLM settings (below);
- accepted and ignored, because ignoring them cannot change what the answer means: sampling
  knobs (`temperature`, `top_p`, penalties, `seed`, `logit_bias`), output-length caps
  (`max_tokens`, `max_completion_tokens`: an RLM's answer is not produced token by token by one
  model, so there is nothing to cap) and bookkeeping (`user`, `metadata`, `store`, ...);
- refused with an OpenAI-shaped 400 unless they hold their neutral value: `n` > 1, `tools`,
  `functions`, `tool_choice`, `response_format` other than text, `logprobs`, `stop`, `audio`,
  non-text `modalities`, `prediction`.

Any other field is refused as OpenAI itself does ("Unrecognized request argument supplied").

RLM settings come per request in an `rlm` object, or as top-level fields of the same name
(what `extra_body=` of the openai SDK produces): max_depth, max_iterations, max_budget,
max_timeout, max_subcalls, max_errors, plus `rlm.max_tokens` (the token limit over the whole
recursion tree; top-level `max_tokens` keeps its OpenAI meaning), `split` and `progress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["last_user", "all_context"]
SPLITS: tuple[Split, ...] = ("last_user", "all_context")

IGNORED_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "logit_bias",
        "max_tokens",
        "max_completion_tokens",
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "reasoning_effort",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    }
)

# field -> the values that mean "not used"; anything else is refused.
NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "stop": (None, [], ""),
    "audio": (None,),
    "prediction": (None,),
    "modalities": (None, ["text"]),
    "web_search_options": (None,),
    "response_format": (None, {"type": "text"}),
}

# RLM setting -> (kind, minimum); ints must be >= minimum, numbers > 0.
SETTINGS: dict[str, type] = {
    "max_depth": int,
    "max_iterations": int,
    "max_errors": int,
    "max_subcalls": int,
    "max_tokens": int,  # only inside the `rlm` object
    "max_budget": float,
    "max_timeout": float,
}
TOP_LEVEL_SETTINGS = frozenset(SETTINGS) - {"max_tokens"}
USED_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "rlm"})
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant"})


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-shaped error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ChatRequest:
    """What one chat-completions request asks the RLM to do."""

    context: Any
    question: str | None
    stream: bool = False
    include_usage: bool = False
    progress_events: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


def parse_chat_request(
    body: Any, *, model_id: str, default_split: Split, max_context_chars: int | None
) -> ChatRequest:
    """Check `body` and split its messages into the RLM's context and question."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key in body:
        if key in USED_FIELDS or key in IGNORED_FIELDS or key in TOP_LEVEL_SETTINGS:
            continue
        if key in NEUTRAL_FIELDS:
            if not _neutral(body[key], NEUTRAL_FIELDS[key]):
                raise RequestError(
                    f"'{key}' is not supported by this server (an RLM answers with one text "
                    "message)",
                    param=key,
                    code="unsupported_parameter",
                )
            continue
        raise RequestError(
            f"Unrecognized request argument supplied: {key}",
            param=key,
            code="unrecognized_argument",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter", param="model")
    if model != model_id:
        raise RequestError(
            f"The model `{model}` does not exist; this server serves `{model_id}`",
            status=404,
            param="model",
            code="model_not_found",
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    include_usage = _stream_options(body.get("stream_options"), stream)
    rlm_fields = body.get("rlm") or {}
    if not isinstance(rlm_fields, dict):
        raise RequestError("'rlm' must be an object", param="rlm")
    settings = _settings(body, rlm_fields)
    split = rlm_fields.get("split", default_split)
    if split not in SPLITS:
        raise RequestError(f"rlm.split must be one of {', '.join(SPLITS)}", param="rlm.split")
    progress = rlm_fields.get("progress", False)
    if not isinstance(progress, bool):
        raise RequestError("rlm.progress must be a boolean", param="rlm.progress")
    messages = _messages(body.get("messages"))
    context, question = split_messages(messages, split)
    if max_context_chars is not None:
        size = sum(len(m["content"]) for m in messages)
        if size > max_context_chars:
            raise RequestError(
                f"the messages hold {size} characters; this server accepts at most "
                f"{max_context_chars}",
                status=413,
                param="messages",
                code="context_too_large",
            )
    return ChatRequest(context, question, stream, include_usage, progress, settings)


def split_messages(messages: list[dict[str, str]], split: Split) -> tuple[Any, str | None]:
    """(context, question). `last_user`: the last message, which must come from the user, is
    the question and the messages before it (a list of {"role", "content"}; "" when there are
    none) the context. `all_context`: every message is context and there is no question."""
    if split == "all_context":
        return messages, None
    last = messages[-1]
    if last["role"] != "user":
        raise RequestError(
            "with rlm.split 'last_user' the last message must be a user message (the question)",
            param="messages",
        )
    before = messages[:-1]
    return (before if before else ""), last["content"]


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    result = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise RequestError(
                f"{where}.role must be one of {', '.join(sorted(MESSAGE_ROLES))} (this server "
                "takes no tool messages)",
                param=f"{where}.role",
            )
        extra = set(message) - {"role", "content", "name", "refusal"}
        if extra:
            raise RequestError(
                f"{where}: unsupported field(s) {', '.join(sorted(extra))}",
                param=f"{where}.{sorted(extra)[0]}",
            )
        result.append({"role": role, "content": _text(message.get("content"), where)})
    return result


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(
                    f"{where}.content[{index}]: only text parts are supported",
                    param=f"{where}.content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(
                    f"{where}.content[{index}].text must be a string", param=f"{where}.content"
                )
            parts.append(text)
        return "".join(parts)
    raise RequestError(f"{where}.content must be a string or an array of text parts")


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise RequestError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise RequestError("stream_options supports only include_usage", param="stream_options")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError("stream_options.include_usage must be a boolean", param="stream_options")
    return include


def _settings(body: dict[str, Any], rlm_fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(rlm_fields) - set(SETTINGS) - {"split", "progress"}
    if unknown:
        raise RequestError(
            f"unknown rlm setting(s): {', '.join(sorted(unknown))}",
            param=f"rlm.{sorted(unknown)[0]}",
        )
    settings: dict[str, Any] = {}
    for name, kind in SETTINGS.items():
        values = []
        if name in rlm_fields and rlm_fields[name] is not None:
            values.append((f"rlm.{name}", rlm_fields[name]))
        if name in TOP_LEVEL_SETTINGS and body.get(name) is not None:
            values.append((name, body[name]))
        if not values:
            continue
        if len(values) == 2 and values[0][1] != values[1][1]:
            raise RequestError(
                f"{name} is given twice with different values (top level and rlm.{name})",
                param=name,
            )
        param, value = values[0]
        settings[name] = _number(param, value, kind)
    return settings


def _number(param: str, value: Any, kind: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{param} must be a number", param=param)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"{param} must be an integer", param=param)
        if value < 1:
            raise RequestError(f"{param} must be >= 1", param=param)
        return int(value)
    if not math.isfinite(value) or value <= 0:
        raise RequestError(f"{param} must be a positive number", param=param)
    return float(value)


def _neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    return any(value == n and type(value) is type(n) for n in neutral)
