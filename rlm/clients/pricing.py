"""Model facts: USD prices per million tokens, and context windows.

Unknown model -> no cost (None), never a guess. Users extend the table with `register_price`
or per client with `backend_kwargs={"prices": {"input": ..., "output": ..., "cached_input": ...}}`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from rlm.core.types import Usage

# model name -> USD per 1M tokens: input, output, cached input (prefix-cache reads).
_PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 1.25, "output": 10.0, "cached_input": 0.125},
    "gpt-5-mini": {"input": 0.25, "output": 2.0, "cached_input": 0.025},
    "gpt-5-nano": {"input": 0.05, "output": 0.4, "cached_input": 0.005},
    "gpt-4.1": {"input": 2.0, "output": 8.0, "cached_input": 0.5},
    "gpt-4.1-mini": {"input": 0.4, "output": 1.6, "cached_input": 0.1},
    "gpt-4.1-nano": {"input": 0.1, "output": 0.4, "cached_input": 0.025},
    "gpt-4o": {"input": 2.5, "output": 10.0, "cached_input": 1.25},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0, "cached_input": 1.5, "cache_write": 18.75},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cached_input": 0.1, "cache_write": 1.25},
    "gemini-2.5-pro": {"input": 1.25, "output": 10.0, "cached_input": 0.31},
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5, "cached_input": 0.075},
    "gemini-2.5-flash-lite": {"input": 0.1, "output": 0.4, "cached_input": 0.025},
}
_lock = threading.Lock()


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
    """Exact name first, then the longest known name the model starts with (dated snapshots)."""
    with _lock:
        if model in _PRICES:
            return _PRICES[model]
        bare = model.rsplit("/", 1)[-1]
        candidates = [name for name in _PRICES if bare == name or bare.startswith(name + "-")]
        return _PRICES[max(candidates, key=len)] if candidates else None


def price_usage(
    model: str, usage: Usage, prices: Mapping[str, float] | None = None
) -> float | None:
    """Cost of one call in USD, or None when the model's price is unknown."""
    table = prices if prices is not None else lookup_price(model)
    if table is None:
        return None
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
