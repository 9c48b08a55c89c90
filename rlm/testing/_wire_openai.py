"""OpenAI (and Azure OpenAI) chat-completions shapes for the provider simulator."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, Literal

from rlm.testing import _wire_common as wire

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return wire.as_json_text(content)


class OpenAIWire:
    """POST /v1/chat/completions; Azure serves the same shapes under /openai/deployments/{d}."""

    name = "openai"
    cache_rule: Literal["prefix", "breakpoint"] = "prefix"
    request_id_header: str | None = "x-request-id"

    def __init__(self, *, azure: bool = False) -> None:
        self.azure = azure

    def parse(self, body: dict[str, Any], route_model: str | None) -> wire.ParsedPrompt:
        problems: list[str] = []
        model = route_model or body.get("model")
        if not isinstance(model, str) or not model:
            problems.append("you must provide a model parameter")
            model = ""
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            problems.append("'messages' must be a non-empty array of message objects")
            raw = []
        system: list[str] = []
        messages: list[dict[str, str]] = []
        segments: list[wire.Segment] = []
        for i, msg in enumerate(raw):
            if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
                problems.append(f"Invalid value for 'messages[{i}].role'")
                continue
            role = str(msg["role"])
            text = content_text(msg.get("content"))
            if msg.get("tool_calls"):
                text += wire.as_json_text(msg["tool_calls"])
            segments.append(wire.Segment(role, text))
            if role in ("system", "developer"):
                system.append(text)
            else:
                messages.append({"role": role, "content": text})
        max_out = wire.optional_int(body.get("max_completion_tokens"))
        if max_out is None:
            max_out = wire.optional_int(body.get("max_tokens"))
        system_text = "\n\n".join(system) if system else None
        return wire.ParsedPrompt(
            model, system_text, messages, segments, max_out, bool(body.get("stream")), problems
        )

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        return bool(wire.bearer(headers) or headers.get("api-key", "").strip())

    def success(
        self, prompt: wire.ParsedPrompt, text: str, truncated: bool, usage: wire.UsageCounts
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prompt.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.prompt_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cache_read, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_rlm_simulator",
        }

    def not_found_message(self, model: str) -> str:
        if self.azure:
            return (
                f"The API deployment {model} does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again."
            )
        return f"The model `{model}` does not exist or you do not have access to it."

    def context_message(self, tokens: int, window: int) -> str:
        return (
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages."
        )

    def error(self, err: wire.WireError) -> dict[str, Any]:
        code = err.code
        if code is None:
            code = {
                "not_found": "DeploymentNotFound" if self.azure else "model_not_found",
                "rate_limit": "rate_limit_exceeded",
                "context_length": "context_length_exceeded",
                "authentication": "invalid_api_key",
            }.get(err.kind)
        return {
            "error": {
                "message": err.message,
                "type": wire.ERROR_NAMES[err.kind].openai,
                "param": err.param,
                "code": code,
            }
        }


def models_list(names: list[str]) -> dict[str, Any]:
    """GET /v1/models."""
    return {"object": "list", "data": [model_entry(n) for n in names]}


def model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "rlm-simulator"}
