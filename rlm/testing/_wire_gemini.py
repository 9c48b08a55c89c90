"""Gemini API (generateContent) shapes for the provider simulator."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Literal

from rlm.testing import _wire_common as wire


def parts_text(content: Any) -> str:
    """Text of a Content object ({"parts": [...]}) or a bare string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, dict):
        return ""
    texts = []
    for part in content.get("parts") or []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            for key in ("functionCall", "function_call", "functionResponse", "function_response"):
                if key in part:
                    texts.append(wire.as_json_text(part[key]))
    return "\n".join(texts)


class GeminiWire:
    """POST /v1beta/models/{model}:generateContent."""

    name = "gemini"
    cache_rule: Literal["prefix", "breakpoint"] = "prefix"
    request_id_header: str | None = None

    def parse(self, body: dict[str, Any], route_model: str | None) -> wire.ParsedPrompt:
        problems: list[str] = []
        model = (route_model or "").removeprefix("models/")
        segments: list[wire.Segment] = []
        system: str | None = None
        raw_system = body.get("systemInstruction", body.get("system_instruction"))
        if raw_system is not None:
            system = parts_text(raw_system)
            segments.append(wire.Segment("system", system))
        raw = body.get("contents")
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            problems.append("* GenerateContentRequest.contents: contents is not specified")
            raw = []
        messages: list[dict[str, str]] = []
        for i, content in enumerate(raw):
            role = content.get("role", "user") if isinstance(content, dict) else None
            if role not in ("user", "model", "function", "tool"):
                problems.append(f"* GenerateContentRequest.contents[{i}].role: invalid role")
                continue
            text = parts_text(content)
            segments.append(wire.Segment(str(role), text))
            messages.append(
                {"role": "assistant" if role == "model" else str(role), "content": text}
            )
        config = body.get("generationConfig", body.get("generation_config")) or {}
        max_out = wire.optional_int(config.get("maxOutputTokens", config.get("max_output_tokens")))
        return wire.ParsedPrompt(model, system, messages, segments, max_out, problems=problems)

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        key = headers.get("x-goog-api-key", "").strip()
        return bool(key or any(k.strip() for k in query.get("key", [])) or wire.bearer(headers))

    def success(
        self, prompt: wire.ParsedPrompt, text: str, truncated: bool, usage: wire.UsageCounts
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "promptTokenCount": usage.prompt_tokens,
            "candidatesTokenCount": usage.output_tokens,
            "totalTokenCount": usage.prompt_tokens + usage.output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt_tokens}],
        }
        if usage.cache_read:  # the real API leaves the field out when nothing was cached
            meta["cachedContentTokenCount"] = usage.cache_read
            meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.cache_read}]
        return {
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": "MAX_TOKENS" if truncated else "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": meta,
            "modelVersion": prompt.model,
            "responseId": secrets.token_hex(11),
        }

    def not_found_message(self, model: str) -> str:
        return (
            f"models/{model} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models."
        )

    def context_message(self, tokens: int, window: int) -> str:
        return (
            f"The input token count ({tokens}) exceeds the maximum number of tokens allowed "
            f"({window})."
        )

    def error(self, err: wire.WireError) -> dict[str, Any]:
        return {
            "error": {
                "code": err.status,
                "message": err.message,
                "status": wire.ERROR_NAMES[err.kind].gemini,
            }
        }


def count_tokens_body(total: int) -> dict[str, Any]:
    """POST ...:countTokens."""
    return {
        "totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }
