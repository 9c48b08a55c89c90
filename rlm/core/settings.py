"""`RunSettings`: what one completion runs with, fixed when it starts.

`RLM` keeps the reference's attributes (`rlm.max_iterations`, ...) so code written against it
reads and sets them as there; each `completion()` takes a frozen copy of them, so a run and
its children see one configuration from start to end, and the loop never reaches back into
the `RLM` that started it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rlm.environments.base import ToolSpec


def frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy (one level deep: what a run may not change under another run)."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class RunSettings:
    environment: str
    environment_kwargs: Mapping[str, Any]
    setup_code: str | None
    depth: int  # the top run's depth
    max_depth: int
    max_iterations: int
    max_errors: int | None
    max_output_chars: int
    max_concurrent_subcalls: int
    custom_system_prompt: str | None
    orchestrator: bool
    user_prologue: str | None
    compaction: bool
    compaction_threshold_pct: float
    context_window: int | None
    persistent: bool
    tools: Mapping[str, Callable[..., Any]] = field(repr=False)
    tool_specs: Mapping[str, ToolSpec] = field(repr=False)
    sub_tools: Mapping[str, Callable[..., Any]] = field(repr=False)
    sub_tool_specs: Mapping[str, ToolSpec] = field(repr=False)
    root_model_name: str | None = None  # the name the user gave the root backend, if any
    logged: Mapping[str, Any] = field(default_factory=dict, repr=False)  # for run_start

    def tools_at(
        self, depth: int
    ) -> tuple[Mapping[str, Callable[..., Any]], Mapping[str, ToolSpec]]:
        """The tools of a run at `depth`: the top run's, or the sub tools below it."""
        if depth == self.depth:
            return self.tools, self.tool_specs
        return self.sub_tools, self.sub_tool_specs
