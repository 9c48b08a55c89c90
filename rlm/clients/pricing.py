"""Model facts: USD prices per million tokens, and context windows.

Unknown model -> no cost (None), never a guess. Users extend the table with `register_price`
or per client with `backend_kwargs={"prices": {"input": ..., "output": ..., "cached_input": ...}}`.
A `max_budget` on a model without a price is refused before the first call
(`rlm.lm_service.budget`).

Where the prices come from, read on 2026-12-03 (standard tier, text, no batch discount):
- Anthropic: the provider's pages, platform.claude.com/docs/en/about-claude/pricing ("Model
  pricing": base input, 5-minute cache writes, cache hits, output) and the model overview
  pages (platform.claude.com/docs/en/models/...). Haiku 5.5 is priced by prompt length in two
  bands and Mythos is limited availability: both stay unpriced here.
- OpenAI: developers.openai.com/api/docs/pricing, as transcribed with its read date by
  api-evangelist/openai (plans/openai-plans-pricing.yml, read 2026-05-04: gpt-5.4*, gpt-5.5)
  and by dated guides citing that page (gpt-5.1 launch notes; o3, o4-mini from the March 2026
  table). o3 and o4-mini have no cached-input rate here: the sources disagree, so their cached
  tokens are charged at the input rate (an over-count, never an under-count).
- Gemini: ai.google.dev/gemini-api/docs/pricing as quoted by dated guides (Jan-Mar 2026). The
  Pro models charge more for prompts over 200K tokens: "long_context_tokens" and the "*_long"
  rates below say so, and `price_usage` applies them.
Prices change; a model that is not listed, or a newer price, goes in with `register_price`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

from rlm.core.types import Usage

_GEMINI_PRO_LONG = {"long_context_tokens": 200_000.0}
_GEMINI_3_PRO = {  # gemini-3-pro-preview and its 3.1 successor are priced alike
    "input": 2.0,
    "output": 12.0,
    "cached_input": 0.2,
    **_GEMINI_PRO_LONG,
    "input_long": 4.0,
    "output_long": 18.0,
    "cached_input_long": 0.4,
}

# model name -> USD per 1M tokens: input, output, cached input (prefix-cache reads), cache
# write (Anthropic, 5 minutes); for prompts over "long_context_tokens": the "*_long" rates.
_PRICES: dict[str, dict[str, float]] = {
    # OpenAI
    "gpt-5.5": {"input": 5.0, "output": 30.0, "cached_input": 0.5},
    "gpt-5.4": {"input": 2.5, "output": 15.0, "cached_input": 0.25},
    "gpt-5.4-mini": {"input": 0.75, "output": 4.5, "cached_input": 0.075},
    "gpt-5.4-nano": {"input": 0.2, "output": 1.25, "cached_input": 0.02},
    "gpt-5.1": {"input": 1.25, "output": 10.0, "cached_input": 0.125},
    "gpt-5": {"input": 1.25, "output": 10.0, "cached_input": 0.125},
    "gpt-5-mini": {"input": 0.25, "output": 2.0, "cached_input": 0.025},
    "gpt-5-nano": {"input": 0.05, "output": 0.4, "cached_input": 0.005},
    "gpt-5-pro": {"input": 15.0, "output": 120.0},
    "o3": {"input": 2.0, "output": 8.0},
    "o3-mini": {"input": 1.1, "output": 4.4},
    "o4-mini": {"input": 1.1, "output": 4.4},
    "gpt-4.1": {"input": 2.0, "output": 8.0, "cached_input": 0.5},
    "gpt-4.1-mini": {"input": 0.4, "output": 1.6, "cached_input": 0.1},
    "gpt-4.1-nano": {"input": 0.1, "output": 0.4, "cached_input": 0.025},
    "gpt-4o": {"input": 2.5, "output": 10.0, "cached_input": 1.25},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
    # Anthropic
    "claude-fable-5-1": {"input": 10.0, "output": 50.0, "cached_input": 0.25, "cache_write": 12.5},
    "claude-fable-5": {"input": 10.0, "output": 50.0, "cached_input": 1.0, "cache_write": 12.5},
    "claude-opus-5-5": {"input": 4.0, "output": 20.0, "cached_input": 0.2, "cache_write": 5.0},
    "claude-opus-5": {"input": 5.0, "output": 25.0, "cached_input": 0.5, "cache_write": 6.25},
    "claude-opus-4-8": {"input": 5.0, "output": 25.0, "cached_input": 0.5, "cache_write": 6.25},
    "claude-opus-4-7": {"input": 5.0, "output": 25.0, "cached_input": 0.5, "cache_write": 6.25},
    "claude-opus-4-6": {"input": 5.0, "output": 25.0, "cached_input": 0.5, "cache_write": 6.25},
    "claude-opus-4-5": {"input": 5.0, "output": 25.0, "cached_input": 0.5, "cache_write": 6.25},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0, "cached_input": 1.5, "cache_write": 18.75},
    "claude-opus-4": {"input": 15.0, "output": 75.0, "cached_input": 1.5, "cache_write": 18.75},
    "claude-opus-4-0": {"input": 15.0, "output": 75.0, "cached_input": 1.5, "cache_write": 18.75},
    "claude-sonnet-5-5": {"input": 2.0, "output": 10.0, "cached_input": 0.2, "cache_write": 2.5},
    "claude-sonnet-5": {"input": 2.0, "output": 10.0, "cached_input": 0.2, "cache_write": 2.5},
    "claude-sonnet-4-6": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
    "claude-sonnet-4": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
    "claude-sonnet-4-0": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cached_input": 0.1, "cache_write": 1.25},
    "claude-3-5-haiku": {"input": 0.8, "output": 4.0, "cached_input": 0.08, "cache_write": 1.0},
    # Gemini
    "gemini-3.1-pro-preview": dict(_GEMINI_3_PRO),
    "gemini-3-pro-preview": dict(_GEMINI_3_PRO),
    "gemini-3-flash-preview": {"input": 0.5, "output": 3.0, "cached_input": 0.05},
    "gemini-2.5-pro": {
        "input": 1.25,
        "output": 10.0,
        "cached_input": 0.31,
        **_GEMINI_PRO_LONG,
        "input_long": 2.5,
        "output_long": 15.0,
    },
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5, "cached_input": 0.075},
    "gemini-2.5-flash-lite": {"input": 0.1, "output": 0.4, "cached_input": 0.025},
}
_lock = threading.Lock()
# "<name>-2025-08-07", "<name>-20251101", "<name>@20250929" (Vertex), "<name>-latest"
_SNAPSHOT = re.compile(r"^(.+?)(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")


def register_price(
    model: str,
    *,
    input: float,
    output: float,
    cached_input: float | None = None,
    cache_write: float | None = None,
) -> None:
    """Add or replace a model's price (USD per 1M tokens)."""
    entry = {"input": input, "output": output}
    if cached_input is not None:
        entry["cached_input"] = cached_input
    if cache_write is not None:
        entry["cache_write"] = cache_write
    with _lock:
        _PRICES[model] = entry


def lookup_price(model: str) -> dict[str, float] | None:
    """The model's price: its exact name, else a dated snapshot of a listed name.

    A provider prefix ("openai/gpt-5") is ignored. Only a date (or "-latest") may follow a
    listed name: "o3-pro" is not "o3" and "gpt-4o-audio-preview" is not "gpt-4o", and pricing
    them as such would under-count what a budget spends; they stay unpriced until registered.
    """
    with _lock:
        if model in _PRICES:
            return _PRICES[model]
        bare = model.rsplit("/", 1)[-1]
        if bare in _PRICES:
            return _PRICES[bare]
        match = _SNAPSHOT.match(bare)
        return _PRICES.get(match.group(1)) if match else None


def rates(table: Mapping[str, float], input_tokens: int) -> Mapping[str, float]:
    """The rates that apply to a prompt of `input_tokens`: the long-context band past its
    threshold, for models priced by prompt length (Gemini Pro)."""
    threshold = table.get("long_context_tokens")
    if threshold is None or input_tokens <= threshold:
        return table
    long = dict(table)
    for key in ("input", "output", "cached_input"):
        if f"{key}_long" in table:
            long[key] = table[f"{key}_long"]
    return long


def price_usage(
    model: str, usage: Usage, prices: Mapping[str, float] | None = None
) -> float | None:
    """Cost of one call in USD, or None when the model's price is unknown."""
    table = prices if prices is not None else lookup_price(model)
    if table is None:
        return None
    table = rates(table, usage.input_tokens)
    # input_tokens counts every prompt token; cached (read) and cache-write tokens are part of it.
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    fresh = max(0, usage.input_tokens - cached - written)
    cost = fresh * table["input"] + usage.output_tokens * table["output"]
    cost += cached * table.get("cached_input", table["input"])
    cost += written * table.get("cache_write", table["input"])
    return cost / 1_000_000


# model name -> context window in tokens (used for compaction); longest matching prefix wins.
_WINDOWS: dict[str, int] = {
    "gpt-5": 272_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "claude": 200_000,
    "gemini": 1_048_576,
    "smollm2": 8_192,
}
DEFAULT_CONTEXT_WINDOW = 128_000


def context_window(model: str) -> int:
    """The model's context window in tokens; 128K when the model is unknown."""
    bare = model.rsplit("/", 1)[-1]
    candidates = [name for name in _WINDOWS if bare.startswith(name)]
    return _WINDOWS[max(candidates, key=len)] if candidates else DEFAULT_CONTEXT_WINDOW
