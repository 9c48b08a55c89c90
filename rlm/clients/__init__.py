"""The client registry: backend names -> `BaseLM` classes, built-ins and plugins alike.

Built-ins are "module:Class" strings imported on first use, so `import rlm.clients` imports no
provider SDK. Third-party packages add backends through the `rlm.clients` entry-point group:

    [project.entry-points."rlm.clients"]
    mybackend = "my_package.client:MyClient"   # a BaseLM subclass

A plugin cannot replace a built-in name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Mapping
from typing import Any

from rlm.clients.base import BaseLM
from rlm.clients.scripted import ScriptedLM
from rlm.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "BUILTIN_CLIENTS",
    "ENTRY_POINT_GROUP",
    "BaseLM",
    "ScriptedLM",
    "available_clients",
    "client_class",
    "get_client",
]

logger = logging.getLogger("rlm.clients")

ENTRY_POINT_GROUP = "rlm.clients"
BUILTIN_CLIENTS: dict[str, str] = {
    "openai": "rlm.clients.openai:OpenAIClient",
    "azure_openai": "rlm.clients.azure_openai:AzureOpenAIClient",
    "anthropic": "rlm.clients.anthropic:AnthropicClient",
    "gemini": "rlm.clients.gemini:GeminiClient",
    "litellm": "rlm.clients.litellm:LiteLLMClient",
    "portkey": "rlm.clients.portkey:PortkeyClient",
    "openrouter": "rlm.clients.openai:OpenRouterClient",
    "vllm": "rlm.clients.openai:VLLMClient",
    "vercel": "rlm.clients.vercel:VercelClient",
    "scripted": "rlm.clients.scripted:ScriptedLM",
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of the `rlm.clients` group, minus any that shadow a built-in."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = _normalise(ep.name)
        if name in BUILTIN_CLIENTS:
            if ep.value != BUILTIN_CLIENTS[name]:
                logger.warning("ignoring plugin client %r (%s): built-in name", ep.name, ep.value)
            continue
        found.setdefault(name, ep)
    return found


def available_clients() -> list[str]:
    """Every backend name: built-ins and installed plugins (whether or not their SDK is)."""
    return sorted({*BUILTIN_CLIENTS, *_plugins()})


def client_class(name: str) -> type[BaseLM]:
    """The `BaseLM` subclass registered as `name` (imports its module, not its SDK)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a backend name is required; known: {available_clients()}")
    key = _normalise(name)
    target = BUILTIN_CLIENTS.get(key)
    try:
        if target is not None:
            module_name, _, attr = target.partition(":")
            loaded: Any = getattr(importlib.import_module(module_name), attr)
        else:
            ep = _plugins().get(key)
            if ep is None:
                raise ConfigurationError(
                    f"unknown backend {name!r}; known backends: {', '.join(available_clients())}"
                )
            target = ep.value
            loaded = ep.load()
    except (MissingDependencyError, ConfigurationError):
        raise
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"backend {name!r} ({target}) could not be loaded: {exc}") from exc
    if not (inspect.isclass(loaded) and issubclass(loaded, BaseLM)):
        raise ConfigurationError(f"backend {name!r} ({target}) is not a BaseLM subclass")
    return loaded


def get_client(name: str | BaseLM, kwargs: Mapping[str, Any] | None = None) -> BaseLM:
    """A new client for backend `name`, built from a copy of `kwargs` (never mutated).

    A `BaseLM` instance (e.g. a reference-style subclass the user built) is used as it is, so
    `RLM(backend=MyLM(...))` needs no registration.
    """
    if isinstance(name, BaseLM):
        if kwargs:
            raise ConfigurationError(
                f"backend is a client instance ({name!r}): configure it directly, "
                f"not through backend_kwargs {sorted(kwargs)}"
            )
        return name
    cls = client_class(name)
    arguments = dict(kwargs or {})
    try:
        inspect.signature(cls).bind(**arguments)
    except TypeError as exc:
        raise ConfigurationError(f"bad arguments for backend {name!r}: {exc}") from exc
    if _normalise(name) in BUILTIN_CLIENTS:
        unknown = sorted(set(arguments) - _accepted_options(cls))
        if unknown:
            raise ConfigurationError(
                f"bad arguments for backend {name!r}: unknown option(s) {unknown}; "
                f"accepted: {sorted(_accepted_options(cls))}"
            )
    return cls(**arguments)


def _accepted_options(cls: type[BaseLM]) -> set[str]:
    """Keyword names the `__init__` chain accepts; built-ins pass `**options` on to `super()`.

    Plugins are only checked against their own signature: they may route `**kwargs` elsewhere.
    """
    accepted: set[str] = set()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        accepted.update(p.name for p in params if p.kind in named)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return accepted
