"""The environment registry: a name ("local", "docker", ...) -> a `BaseEnv` subclass.

Built-ins are listed by import path and imported only when used; third-party environments
register under the entry-point group ``rlm.environments`` (``name = "pkg.module:Class"``) and
are discovered the same lazy way. A built-in name always wins over a plugin of the same name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError

if TYPE_CHECKING:
    from rlm.environments.base import BaseEnv, HandlerEndpoint, ToolSpec
    from rlm.environments.ipython import IPythonREPL
    from rlm.environments.local import LocalREPL

ENTRY_POINT_GROUP = "rlm.environments"

BUILTIN_ENVIRONMENTS: dict[str, str] = {
    "local": "rlm.environments.local:LocalREPL",
    "ipython": "rlm.environments.ipython:IPythonREPL",
    "process": "rlm.environments.process:ProcessREPL",
    "docker": "rlm.environments.docker:DockerREPL",
    "modal": "rlm.environments.modal:ModalREPL",
    "e2b": "rlm.environments.e2b:E2BREPL",
    "daytona": "rlm.environments.daytona:DaytonaREPL",
    "prime": "rlm.environments.prime:PrimeREPL",
}

_LAZY = {
    "BaseEnv": "rlm.environments.base",
    "HandlerEndpoint": "rlm.environments.base",
    "ToolSpec": "rlm.environments.base",
    "LocalREPL": "rlm.environments.local",
    "IPythonREPL": "rlm.environments.ipython",
    "IsolatedEnv": "rlm.environments.isolated",
    "NonIsolatedEnv": "rlm.environments.base_env",
    "SupportsPersistence": "rlm.environments.base_env",
}

# ENTRY_POINT_GROUP is left out of __all__: rlm.clients exports its own under that name.
__all__ = [
    "BUILTIN_ENVIRONMENTS",
    "BaseEnv",
    "HandlerEndpoint",
    "IPythonREPL",
    "IsolatedEnv",
    "LocalREPL",
    "NonIsolatedEnv",
    "SupportsPersistence",
    "ToolSpec",
    "available_environments",
    "environment_class",
    "get_environment",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module_exists(target: str) -> bool:
    try:
        return importlib.util.find_spec(target.partition(":")[0]) is not None
    except (ImportError, ValueError):
        return False


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_environments() -> list[str]:
    """Names that `environment_class` can resolve: built-ins present in this install, plugins."""
    names = [name for name, target in BUILTIN_ENVIRONMENTS.items() if _module_exists(target)]
    names += sorted(name for name in _plugins() if name not in BUILTIN_ENVIRONMENTS)
    return names


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def environment_class(name: str) -> type[BaseEnv]:
    """The environment class registered under `name`; ConfigurationError if there is none."""
    from rlm.environments.base import BaseEnv

    target = BUILTIN_ENVIRONMENTS.get(name)
    if target is not None and _module_exists(target):
        cls = _import_target(target)
        source = target
    else:
        plugin = _plugins().get(name) if target is None else None
        if plugin is None:
            known = ", ".join(available_environments()) or "none"
            what = "unknown environment" if target is None else "not installed: environment"
            raise ConfigurationError(f"{what} {name!r}; known environments: {known}")
        try:
            cls = plugin.load()
        except Exception as exc:
            raise ConfigurationError(
                f"environment plugin {name!r} ({plugin.value}) failed to load: {exc}"
            ) from exc
        source = plugin.value
    if not (isinstance(cls, type) and issubclass(cls, BaseEnv)):
        raise ConfigurationError(f"environment {name!r} ({source}) is not a BaseEnv subclass")
    return cls


def get_environment(name: str, kwargs: Mapping[str, Any] | None = None) -> BaseEnv:
    """Build the environment `name` with keyword arguments `kwargs`."""
    return environment_class(name)(**dict(kwargs or {}))
