"""Offline test tools that ship with `rlm`: a provider simulator and a scripted LM.

    from rlm.testing import ProviderSimulator, ScriptedLM

Names load lazily, so `python -m rlm.testing.simulator` and `import rlm.testing` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlm.clients.scripted import ScriptedLM
    from rlm.testing.simulator import FaultPlan, ProviderSimulator, SimReply, SimRequest

__all__ = ["FaultPlan", "ProviderSimulator", "ScriptedLM", "SimReply", "SimRequest"]

_HOMES = {
    "FaultPlan": "rlm.testing.simulator",
    "ProviderSimulator": "rlm.testing.simulator",
    "SimReply": "rlm.testing.simulator",
    "SimRequest": "rlm.testing.simulator",
    "ScriptedLM": "rlm.clients.scripted",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rlm.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
