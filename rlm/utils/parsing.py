"""The reference's `rlm.utils.parsing`, for users who drive a REPL and a model by hand.

`find_code_blocks` is `rlm.parsing`'s (line-based fences: a fence inside a string literal does
not end a block). The formatters below build the reference's message shapes from our
`REPLResult`/`RLMIteration`; `RLM`'s own loop words its feedback in `rlm.prompts`.
"""

from __future__ import annotations

from typing import Any

from rlm.core.types import Message, REPLResult, RLMIteration
from rlm.parsing import find_code_blocks
from rlm.prompts import truncate

__all__ = [
    "convert_context_for_repl",
    "find_code_blocks",
    "format_execution_result",
    "format_iteration",
]

_SHOWN_TYPES = (str, int, float, bool, list, dict, tuple)


def format_execution_result(result: REPLResult) -> str:
    """A cell's stdout, stderr and the names of its public variables; "No output" if none."""
    parts = [f"\n{text}" for text in (result.stdout, result.stderr) if text]
    # Our environments summarise locals as strings; a user-built result may hold real values.
    names = [
        name
        for name, value in result.locals.items()
        if not name.startswith("_") and isinstance(value, _SHOWN_TYPES)
    ]
    if names:
        parts.append(f"REPL variables: {names}\n")
    return "\n\n".join(parts) if parts else "No output"


def format_iteration(iteration: RLMIteration, max_character_length: int = 20_000) -> list[Message]:
    """The messages a turn adds to the history: the reply, then one user message with every
    block's output (each cut to `max_character_length`, keeping its head and tail)."""
    messages: list[Message] = [{"role": "assistant", "content": iteration.response}]
    blocks = iteration.code_blocks
    parts = []
    for i, block in enumerate(blocks):
        text = truncate(format_execution_result(block.result), max_character_length)
        header = f"REPL output (block {i + 1}):" if len(blocks) > 1 else "REPL output:"
        parts.append(f"{header}\n{text}")
    if parts:
        messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages


def convert_context_for_repl(context: Any) -> tuple[Any, str | None]:
    """(data, text): a str context is text, anything else data; chat messages become their
    contents."""
    if isinstance(context, str):
        return None, context
    if (
        isinstance(context, list)
        and context
        and isinstance(context[0], dict)
        and "content" in context[0]
    ):
        return [message.get("content", "") for message in context], None
    return context, None
