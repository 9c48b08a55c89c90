"""The environment registry: built-ins, entry-point plugins, errors that name the options."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

import rlm.environments as registry
from rlm.core.types import REPLResult
from rlm.environments import (
    BaseEnv,
    HandlerEndpoint,
    LocalREPL,
    ToolSpec,
    available_environments,
    environment_class,
    get_environment,
)
from rlm.errors import ConfigurationError

pytestmark = pytest.mark.timeout(30)


class PluginEnv(BaseEnv):
    """A third-party environment, registered through an entry point in the tests."""

    name = "plugin"

    def load_context(self, context: Any, index: int = 0) -> None:
        self.context = context

    def execute(self, code: str) -> REPLResult:
        return REPLResult(stdout=code)


class NotAnEnv:
    pass


def fake_entry_points(**targets: str) -> Any:
    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        assert group == "rlm.environments"
        return [importlib.metadata.EntryPoint(n, v, group) for n, v in targets.items()]

    return entry_points


def test_local_resolves_and_builds_with_kwargs() -> None:
    assert environment_class("local") is LocalREPL
    env = get_environment("local", {"timeout": 3.0, "depth": 2})
    try:
        assert isinstance(env, LocalREPL) and env.timeout == 3.0 and env.depth == 2
        assert env.execute("1 + 1").stdout == "2\n"
    finally:
        env.cleanup()
    assert "local" in available_environments()


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown environment 'nope'.*local"):
        environment_class("nope")


def test_builtins_whose_module_is_missing_are_not_available(monkeypatch: Any) -> None:
    monkeypatch.setitem(registry.BUILTIN_ENVIRONMENTS, "ghost", "rlm.environments.no_such:Ghost")
    assert "ghost" not in available_environments()
    with pytest.raises(ConfigurationError, match=r"not installed: environment 'ghost'.*local"):
        environment_class("ghost")


def test_entry_point_plugin_is_discovered(monkeypatch: Any) -> None:
    monkeypatch.setattr(
        importlib.metadata, "entry_points", fake_entry_points(mine=f"{__name__}:PluginEnv")
    )
    assert "mine" in available_environments()
    assert environment_class("mine") is PluginEnv
    env = get_environment("mine", {"depth": 1})
    assert isinstance(env, PluginEnv) and env.depth == 1
    assert env.execute("code").stdout == "code"


def test_a_plugin_cannot_shadow_a_builtin(monkeypatch: Any) -> None:
    monkeypatch.setattr(
        importlib.metadata, "entry_points", fake_entry_points(local=f"{__name__}:PluginEnv")
    )
    assert environment_class("local") is LocalREPL
    assert available_environments().count("local") == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [(f"{__name__}:NotAnEnv", "not a BaseEnv subclass"), ("no_such_pkg_xyz:Env", "failed to load")],
)
def test_broken_plugins_are_configuration_errors(
    monkeypatch: Any, target: str, message: str
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(bad=target))
    with pytest.raises(ConfigurationError, match=message):
        environment_class("bad")


def test_unknown_kwarg_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="accepted"):
        get_environment("local", {"no_such_option": 1})


def test_lazy_reexports() -> None:
    assert BaseEnv.__module__ == "rlm.environments.base"
    assert HandlerEndpoint("127.0.0.1", 1, "secret").port == 1
    assert "secret" not in repr(HandlerEndpoint("127.0.0.1", 1, "secret"))
    assert ToolSpec("t").callable is True
    with pytest.raises(AttributeError):
        _ = registry.NoSuchThing
