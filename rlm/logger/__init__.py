"""Trajectories: the JSON-lines logger, the Rich console and replay.

`RLMLogger` needs only the standard library and is imported eagerly (`import rlm` exposes
it). `VerbosePrinter` and `ConsoleView` need the optional `rich` extra, so they load on first
access and this package never imports rich itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlm.logger.jsonl import RLMLogger
from rlm.logger.records import SCHEMA, SCHEMA_VERSION
from rlm.logger.redact import Redactor, redact

if TYPE_CHECKING:
    from rlm.logger.verbose import ConsoleView, VerbosePrinter

_LAZY = {
    "VerbosePrinter": "rlm.logger.verbose",
    "ConsoleView": "rlm.logger.verbose",
}

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ConsoleView",
    "RLMLogger",
    "Redactor",
    "VerbosePrinter",
    "redact",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlm.logger' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
