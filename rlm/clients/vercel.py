"""Vercel AI Gateway: one key, many providers, over the gateway's OpenAI-compatible API.

The reference runs `backend="vercel"` on the `openai` SDK pointed at
`https://ai-gateway.vercel.sh/v1` with the key from `AI_GATEWAY_API_KEY`; this client does the
same, so its users' `backend_kwargs` and environment carry over unchanged. Models are named
`creator/model` (`"openai/gpt-5-mini"`, `"anthropic/claude-sonnet-4.5"`).
"""

from __future__ import annotations

from typing import ClassVar

from rlm.clients.openai import OpenAIClient


class VercelClient(OpenAIClient):
    """Vercel's AI gateway. `max_tokens` is sent under that name: the gateway forwards it to
    every provider, while `max_completion_tokens` is an OpenAI-only name."""

    provider: ClassVar[str] = "vercel"
    env_key: ClassVar[str | None] = "AI_GATEWAY_API_KEY"
    default_base_url: ClassVar[str | None] = "https://ai-gateway.vercel.sh/v1"
    max_tokens_field: ClassVar[str] = "max_tokens"
