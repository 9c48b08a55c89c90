"""Lazy imports of optional SDKs: `import rlm` never imports a provider or sandbox SDK."""

from __future__ import annotations

import importlib
from types import ModuleType

from rlm.errors import MissingDependencyError


def require(module: str, *, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency or raise an error naming the `pip install` to run."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module.split(".")[0], extra) from exc
