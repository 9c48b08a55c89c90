"""The client registry: built-ins, entry-point plugins, errors, and no SDK import on import."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import types
from typing import Any

import pytest

import rlm.clients as registry
from rlm.clients import (
    BUILTIN_CLIENTS,
    BaseLM,
    ScriptedLM,
    available_clients,
    client_class,
    get_client,
)
from rlm.core.types import LMResponse, Message
from rlm.errors import ConfigurationError, MissingDependencyError

pytestmark = pytest.mark.timeout(60)

SDK_MODULES = ["openai", "anthropic", "google.genai", "litellm", "portkey_ai"]


class PluginLM(BaseLM):
    provider = "plugin"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        return LMResponse("from plugin", self.model_name)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> list[importlib.metadata.EntryPoint]:
    """Entry points the registry will see; a fake module holds the plugin classes."""
    module = types.ModuleType("rlm_test_plugin")
    module.PluginLM = PluginLM  # type: ignore[attr-defined]
    module.NotAClient = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rlm_test_plugin", module)
    found: list[importlib.metadata.EntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        if params.get("group") == registry.ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(found)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return found


def plugin(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


def test_builtin_table() -> None:
    """Every built-in name loads the client class whose `provider` is that name."""
    assert {"openai", "azure_openai", "anthropic", "gemini", "litellm", "portkey"} <= set(
        BUILTIN_CLIENTS
    )
    for name in BUILTIN_CLIENTS:
        cls = client_class(name)
        assert issubclass(cls, BaseLM) and cls.provider == name, name
    assert set(BUILTIN_CLIENTS) <= set(available_clients())


@pytest.mark.parametrize("name", sorted(BUILTIN_CLIENTS))
def test_every_builtin_resolves_to_a_baselm_subclass(name: str) -> None:
    cls = client_class(name)
    assert issubclass(cls, BaseLM)
    assert cls.__name__ == BUILTIN_CLIENTS[name].rsplit(":", 1)[1]


def test_names_are_normalised() -> None:
    assert client_class("Azure-OpenAI") is client_class("azure_openai")
    assert client_class(" scripted ") is ScriptedLM


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        client_class("no-such-backend")
    message = str(info.value)
    assert "no-such-backend" in message
    for name in BUILTIN_CLIENTS:
        assert name in message
    with pytest.raises(ConfigurationError):
        get_client("", {})


def test_get_client_copies_kwargs() -> None:
    kwargs: dict[str, Any] = {"responses": ["a"], "sampling_args": {"temperature": 0.5}}
    snapshot = json.dumps(kwargs, sort_keys=True)
    lm = get_client("scripted", kwargs)
    assert isinstance(lm, ScriptedLM)
    assert json.dumps(kwargs, sort_keys=True) == snapshot
    assert lm.model_name == "scripted"


def test_bad_kwargs_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="bad arguments for backend 'scripted'"):
        get_client("scripted", {"responses": ["a"], "no_such_option": 1})
    with pytest.raises(ConfigurationError):
        get_client("scripted", None)  # `responses` is required
    # Built-ins pass **options on to BaseLM: unknown names are caught before any SDK is needed.
    with pytest.raises(ConfigurationError, match="unknown option"):
        get_client("openai", {"model_name": "gpt-5-mini", "api_key": "k", "temprature": 0.1})


def test_missing_sdk_raises_the_clients_missing_dependency_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    with pytest.raises(MissingDependencyError) as info:
        get_client("openai", {"model_name": "gpt-5-mini", "api_key": "k"})
    assert "pip install" in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_entry_point_plugin_is_discovered_and_built(
    plugins: list[importlib.metadata.EntryPoint],
) -> None:
    plugins.append(plugin("my-backend", "rlm_test_plugin:PluginLM"))
    assert "my_backend" in available_clients()
    assert client_class("my-backend") is PluginLM
    lm = get_client("my_backend", {"model_name": "p"})
    assert isinstance(lm, PluginLM)
    assert lm.respond("x").text == "from plugin"


def test_plugin_cannot_replace_a_builtin(plugins: list[importlib.metadata.EntryPoint]) -> None:
    plugins.append(plugin("scripted", "rlm_test_plugin:PluginLM"))
    assert client_class("scripted") is ScriptedLM


def test_broken_plugins_are_configuration_errors(
    plugins: list[importlib.metadata.EntryPoint],
) -> None:
    plugins.append(plugin("not_a_client", "rlm_test_plugin:NotAClient"))
    plugins.append(plugin("missing_module", "rlm_no_such_module_xyz:Client"))
    plugins.append(plugin("missing_attr", "rlm_test_plugin:Nope"))
    with pytest.raises(ConfigurationError, match="not a BaseLM subclass"):
        client_class("not_a_client")
    with pytest.raises(ConfigurationError, match="could not be loaded"):
        client_class("missing_module")
    with pytest.raises(ConfigurationError, match="could not be loaded"):
        client_class("missing_attr")


def test_reexports() -> None:
    assert registry.BaseLM is BaseLM
    assert registry.ScriptedLM is ScriptedLM


def test_importing_the_registry_and_resolving_classes_imports_no_sdk() -> None:
    code = f"""
import json, sys
import rlm.clients
before = [m for m in {SDK_MODULES!r} if m in sys.modules]
for name in rlm.clients.BUILTIN_CLIENTS:
    rlm.clients.client_class(name)
after = [m for m in {SDK_MODULES!r} if m in sys.modules]
print(json.dumps([before, after]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == []
    assert after == []
