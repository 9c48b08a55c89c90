"""What the three wire formats of the provider simulator share: parsed prompts, errors, tokens.

Each `_wire_<provider>.py` module turns a provider's request JSON into a `ParsedPrompt` and
turns the simulator's answer (or a `WireError`) back into that provider's response JSON.
Stdlib only, like the simulator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

CHARS_PER_TOKEN = 4

ErrorKind = Literal[
    "invalid_request", "authentication", "not_found", "rate_limit", "server", "context_length"
]


@dataclass(frozen=True)
class ErrorNames:
    """How each provider names one kind of error: HTTP status, OpenAI and Anthropic error
    types, Gemini status."""

    status: int
    openai: str
    anthropic: str
    gemini: str


ERROR_NAMES: dict[str, ErrorNames] = {
    "invalid_request": ErrorNames(
        400, "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"
    ),
    "authentication": ErrorNames(
        401, "invalid_request_error", "authentication_error", "UNAUTHENTICATED"
    ),
    "not_found": ErrorNames(404, "invalid_request_error", "not_found_error", "NOT_FOUND"),
    "rate_limit": ErrorNames(429, "requests", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "server": ErrorNames(500, "server_error", "api_error", "INTERNAL"),
    "context_length": ErrorNames(
        400, "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"
    ),
}


def tokens_of(chars: int) -> int:
    """Simulated token count of `chars` characters (about four characters per token)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass
class SimRequest:
    """One generation request the simulator received, normalised across wire formats.

    `messages` hold {"role", "content"} with text content ("model" is reported as "assistant";
    OpenAI system/developer messages are moved to `system`). `headers` have lower-case names.
    """

    wire: str
    path: str
    model: str
    system: str | None
    messages: list[dict[str, str]]
    body: dict[str, Any]
    headers: dict[str, str]
    time: float


@dataclass(frozen=True)
class Segment:
    """One unit of prompt-cache granularity (a message, or an Anthropic content block)."""

    role: str
    text: str
    marked: bool = False  # carries an Anthropic `cache_control` breakpoint


@dataclass
class ParsedPrompt:
    """A provider request reduced to what the simulator needs."""

    model: str
    system: str | None
    messages: list[dict[str, str]]
    segments: list[Segment]
    max_output_tokens: int | None = None
    stream: bool = False
    problems: list[str] = field(default_factory=list)  # validation errors -> HTTP 400

    @property
    def prompt_chars(self) -> int:
        return sum(len(s.text) for s in self.segments)


@dataclass(frozen=True)
class UsageCounts:
    """Token counts of one simulated answer. `prompt_tokens` includes cached and written ones."""

    prompt_tokens: int
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0


@dataclass
class Answer:
    """What the HTTP handler does with one request."""

    action: Literal["send", "reset", "stall"] = "send"
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class WireError(Exception):
    """An error the simulator answers in the provider's own error JSON."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return ERROR_NAMES[self.kind].status


class Wire(Protocol):
    """One provider's request and response shapes."""

    name: str
    cache_rule: Literal["prefix", "breakpoint"]
    request_id_header: str | None

    def parse(self, body: dict[str, Any], route_model: str | None) -> ParsedPrompt: ...

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool: ...

    def success(
        self, prompt: ParsedPrompt, text: str, truncated: bool, usage: UsageCounts
    ) -> dict[str, Any]: ...

    def error(self, err: WireError) -> dict[str, Any]: ...

    def not_found_message(self, model: str) -> str: ...

    def context_message(self, tokens: int, window: int) -> str: ...


def bearer(headers: Mapping[str, str]) -> str:
    """The token of an `Authorization: Bearer ...` header, or ''."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def as_json_text(value: Any) -> str:
    """Non-text content (tool calls, tool inputs) counted as its compact JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def optional_int(value: Any) -> int | None:
    """An integer request field, or None when absent or not an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
