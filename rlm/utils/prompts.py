"""The reference's `rlm.utils.prompts`: the system prompt and the per-turn user prompt.

The text is `rlm.prompts`' (our wording, which `RLM` sends); these builders give it the
reference's call shapes for users who assemble the messages themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlm.core.types import Message, QueryMetadata
from rlm.environments.base import ToolSpec
from rlm.prompts import SYSTEM_PROMPT, build_system_prompt, context_metadata_message

__all__ = ["RLM_SYSTEM_PROMPT", "USER_PROMPT", "build_rlm_system_prompt", "build_user_prompt"]

RLM_SYSTEM_PROMPT = SYSTEM_PROMPT
USER_PROMPT = "Turn {iter_1}/{max_iter}:"
_DEFAULT_MAX_ITERATIONS = 30


def _tool_specs(custom_tools: Mapping[str, Any] | None) -> dict[str, ToolSpec]:
    specs = {}
    for name, entry in (custom_tools or {}).items():
        description = ""
        value = entry
        if isinstance(entry, dict) and "tool" in entry:
            description = str(entry.get("description", ""))
            value = entry["tool"]
        specs[name] = ToolSpec(name, description, callable(value))
    return specs


def build_rlm_system_prompt(
    system_prompt: str,
    query_metadata: QueryMetadata,
    custom_tools: Mapping[str, Any] | None = None,
    root_prompt: str | None = None,
    orchestrator: bool = True,
) -> list[Message]:
    """[system, user]: the system prompt (used verbatim: it is not `.format()`-ed, so braces
    in it are safe) with the tools listed, then what the context is and the question.

    `orchestrator` is accepted for the reference's signature; our prompt has no separate
    orchestrator addendum.
    """
    del orchestrator
    system = build_system_prompt(system_prompt, _tool_specs(custom_tools), max_depth=1, depth=0)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": context_metadata_message(query_metadata, root_prompt)},
    ]


def build_user_prompt(
    root_prompt: str | None = None,
    iteration: int = 0,
    context_count: int = 1,
    history_count: int = 0,
    max_iterations: int = _DEFAULT_MAX_ITERATIONS,
) -> Message:
    """The user message that opens turn `iteration + 1`, naming extra contexts and histories."""
    text = USER_PROMPT.format(iter_1=iteration + 1, max_iter=max_iterations)
    if iteration == 0:
        text = "Look at the context before you give a final answer.\n\n" + text
    if root_prompt:
        text += f"\n\nThe question: {root_prompt}"
    if context_count > 1:
        text += (
            f"\n\n{context_count} contexts are loaded: context_0 ... context_{context_count - 1}."
        )
    if history_count > 0:
        text += (
            f"\n\n{history_count} earlier conversation(s) are loaded: "
            f"history_0 ... history_{history_count - 1} (`history` is history_0)."
        )
    return {"role": "user", "content": text}
