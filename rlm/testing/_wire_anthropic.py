"""Anthropic Messages API shapes for the provider simulator."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Literal

from rlm.testing import _wire_common as wire


def block_text(block: Any) -> str:
    """Text of one content block (text, tool input, tool result, thinking)."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return wire.as_json_text(block)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return wire.as_json_text(block.get("input", {}))
    if kind == "tool_result":
        inner = block.get("content", "")
        if isinstance(inner, list):
            return "\n".join(block_text(b) for b in inner)
        return str(inner)
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return ""


class AnthropicWire:
    """POST /v1/messages."""

    name = "anthropic"
    cache_rule: Literal["prefix", "breakpoint"] = "breakpoint"
    request_id_header: str | None = "request-id"

    def parse(self, body: dict[str, Any], route_model: str | None) -> wire.ParsedPrompt:
        problems: list[str] = []
        model = body.get("model")
        if not isinstance(model, str) or not model:
            problems.append("model: Field required")
            model = ""
        max_tokens = wire.optional_int(body.get("max_tokens"))
        if max_tokens is None:
            problems.append("max_tokens: Field required")
        segments: list[wire.Segment] = []
        system_text: str | None = None
        raw_system = body.get("system")
        if isinstance(raw_system, str):
            system_text = raw_system
            segments.append(wire.Segment("system", raw_system))
        elif isinstance(raw_system, list):
            parts = []
            for block in raw_system:
                text = block_text(block)
                parts.append(text)
                marked = isinstance(block, dict) and bool(block.get("cache_control"))
                segments.append(wire.Segment("system", text, marked))
            system_text = "\n".join(parts)
        elif raw_system is not None:
            problems.append("system: Input should be a valid string or list of text blocks")
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            problems.append("messages: Field required (a non-empty list)")
            raw = []
        messages: list[dict[str, str]] = []
        for i, msg in enumerate(raw):
            role = msg.get("role") if isinstance(msg, dict) else None
            if role not in ("user", "assistant"):
                problems.append(
                    f'messages.{i}.role: Unexpected role "{role}". The Messages API accepts a '
                    'top-level `system` parameter, not "system" as an input message role.'
                )
                continue
            assert isinstance(msg, dict)
            content = msg.get("content")
            if isinstance(content, str):
                segments.append(wire.Segment(role, content))
                messages.append({"role": role, "content": content})
                continue
            blocks = content if isinstance(content, list) else []
            texts = []
            for block in blocks:
                text = block_text(block)
                texts.append(text)
                marked = isinstance(block, dict) and bool(block.get("cache_control"))
                segments.append(wire.Segment(role, text, marked))
            messages.append({"role": role, "content": "\n".join(texts)})
        if body.get("cache_control") and segments:
            # Automatic caching: a top-level cache_control marks the last cacheable block.
            last = segments[-1]
            segments[-1] = wire.Segment(last.role, last.text, True)
        return wire.ParsedPrompt(
            model, system_text, messages, segments, max_tokens, bool(body.get("stream")), problems
        )

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        return bool(headers.get("x-api-key", "").strip() or wire.bearer(headers))

    def success(
        self, prompt: wire.ParsedPrompt, text: str, truncated: bool, usage: wire.UsageCounts
    ) -> dict[str, Any]:
        fresh = max(0, usage.prompt_tokens - usage.cache_read - usage.cache_write)
        return {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": fresh,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_write,
                "cache_read_input_tokens": usage.cache_read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage.cache_write,
                    "ephemeral_1h_input_tokens": 0,
                },
                "service_tier": "standard",
            },
        }

    def not_found_message(self, model: str) -> str:
        return f"model: {model}"

    def context_message(self, tokens: int, window: int) -> str:
        return f"prompt is too long: {tokens} tokens > {window} maximum"

    def error(self, err: wire.WireError) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": wire.ERROR_NAMES[err.kind].anthropic, "message": err.message},
            "request_id": f"req_{secrets.token_hex(12)}",
        }
