"""Custom tools as an RLM is given them, and as environments see them.

`RLM(custom_tools={name: callable | JSON value | {"tool": ..., "description": ...}})`:
callables run on the host (a cell's call is a request to the LM service), values are bound
in the REPL as JSON data. Environments get only the `ToolSpec`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from rlm.environments.base import ToolSpec
from rlm.errors import ConfigurationError
from rlm.runtime.repl import HELPER_NAMES

RESERVED_NAMES = frozenset({*HELPER_NAMES, "answer", "context", "history"})


def normalise_tools(
    tools: Mapping[str, Any] | None,
) -> tuple[dict[str, Callable[..., Any]], dict[str, ToolSpec]]:
    """Split custom tools into host-side callables and the specs environments see."""
    callables: dict[str, Callable[..., Any]] = {}
    specs: dict[str, ToolSpec] = {}
    for name, entry in (tools or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"custom tool name {name!r} is not a Python identifier")
        if name in RESERVED_NAMES or name.startswith(("context_", "history_")):
            raise ConfigurationError(f"custom tool name {name!r} is reserved by the REPL")
        description = ""
        if isinstance(entry, Mapping) and "tool" in entry:
            description = str(entry.get("description", ""))
            entry = entry["tool"]
        if callable(entry):
            callables[name] = entry
            specs[name] = ToolSpec(name, description or (entry.__doc__ or "").strip(), True)
        else:
            try:
                json.dumps(entry, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"custom tool {name!r} is neither callable nor JSON data ({exc})"
                ) from exc
            specs[name] = ToolSpec(name, description, False, entry)
    return callables, specs
