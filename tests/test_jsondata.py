"""One JSON-data walker (`rlm.runtime.jsondata`): every environment and the REPL helpers accept
and refuse the same values, with the same depth limit and a cycle check everywhere."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Any

import pytest

from rlm import RLM
from rlm.clients.scripted import ScriptedLM
from rlm.core.types import REPLResult
from rlm.environments import get_environment
from rlm.environments.base import BaseEnv
from rlm.environments.local import LocalREPL
from rlm.errors import ContextLoadError
from rlm.runtime.jsondata import MAX_DEPTH, check_json, json_copy, to_jsonable

FENCE = "```"
ENVIRONMENTS = ["local", "process"]


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def nested(levels: int) -> list[Any]:
    """A list `levels` containers deep: nested(1) == [], nested(2) == [[]]."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def build_in_cell(levels: int) -> str:
    """Cell code binding `d` to nested(levels)."""
    return f"d = []\nfor _ in range({levels - 1}):\n    d = [d]\n"


def cyclic_values() -> list[Any]:
    a: list[Any] = []
    a.append(a)
    d: dict[str, Any] = {"k": [1, 2]}
    d["k"].append(d)
    return [a, d, {"outer": [a]}]


# ------------------------------------------------------------------ through RLM.completion


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_self_referencing_context_is_a_context_load_error_before_any_turn(
    environment: str,
) -> None:
    root = ScriptedLM(responses=[repl("FINAL('ran')")] * 4)
    with RLM(backend=root, environment=environment) as rlm:
        for bad in cyclic_values():
            with pytest.raises(ContextLoadError, match="cycle"):
                rlm.completion(bad)
        assert root.calls == []  # refused before the first root turn
        shared = ["x"]
        assert rlm.completion([shared, shared]).response == "ran"  # shared is not a cycle


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_depth_limit_is_the_same_through_rlm(environment: str) -> None:
    root = ScriptedLM(responses=[repl("FINAL(str(len(context)))")])
    with RLM(backend=root, environment=environment) as rlm:
        with pytest.raises(ContextLoadError, match=f"nested more than {MAX_DEPTH} levels"):
            rlm.completion(nested(MAX_DEPTH + 1))
        assert rlm.completion(nested(MAX_DEPTH)).response == "1"


# ------------------------------------------------------------------- environments directly


@pytest.fixture(params=["local", "process", "ipython"])
def env(request: pytest.FixtureRequest) -> Iterator[BaseEnv]:
    if request.param == "ipython":
        pytest.importorskip("IPython")
    environment = get_environment(request.param, {})
    yield environment
    environment.cleanup()


def test_every_loader_takes_the_limit_and_refuses_one_more(env: BaseEnv) -> None:
    with pytest.raises(ContextLoadError, match=f"nested more than {MAX_DEPTH} levels"):
        env.load_context(nested(MAX_DEPTH + 1))
    for bad in cyclic_values():
        with pytest.raises(ContextLoadError, match="cycle"):
            env.load_context(bad)
    env.load_context(nested(MAX_DEPTH))
    code = "n = 0\nv = context\nwhile v:\n    v = v[0]\n    n += 1\nprint(n + 1)"
    result = env.execute(code)
    assert (result.stdout, result.error) == (f"{MAX_DEPTH}\n", None)


def test_every_loader_refuses_a_history_that_is_not_json(env: BaseEnv) -> None:
    history: list[Any] = [{"role": "user", "content": "q"}]
    history.append(history)
    with pytest.raises(ContextLoadError, match="cycle"):
        env.add_history(history, 0)


# --------------------------------------------------------------------- the REPL helpers


def test_rlm_query_takes_a_context_at_the_limit_and_refuses_one_more() -> None:
    """In a cell, `rlm_query(context=...)` checks its context with the same walker: one level
    past the limit is a TypeError at the call; at the limit it is sent (and, with no handler
    connected, answered with the connection error)."""
    env = LocalREPL()
    try:
        over = env.execute_code(build_in_cell(MAX_DEPTH + 1) + "rlm_query('q', context=d)")
        assert over.error is not None and over.error.startswith("TypeError: rlm_query():")
        assert f"nested more than {MAX_DEPTH} levels" in over.error
        at = env.execute_code(build_in_cell(MAX_DEPTH) + "print(rlm_query('q', context=d))")
        assert at.error is None
        assert at.stdout.startswith("Error: ConnectionError: no LM handler")
        cyc = env.execute_code("a = []\na.append(a)\nrlm_query('q', context={'x': a})")
        assert cyc.error is not None and "context['x'][0] contains itself" in cyc.error
    finally:
        env.cleanup()


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_child_gets_a_context_at_the_limit_end_to_end(environment: str) -> None:
    code = (
        build_in_cell(MAX_DEPTH)
        + "ok = rlm_query('count', context=d)\n"
        + build_in_cell(MAX_DEPTH + 1)
        + "try:\n    rlm_query('count', context=d)\nexcept TypeError as exc:\n"
        + "    over = str(exc)\nFINAL(ok + ' | ' + over)"
    )
    child = "n = 0\nv = context\nwhile v:\n    v = v[0]\n    n += 1\nFINAL(str(n + 1))"
    root = ScriptedLM(responses=[repl(code), repl(child)])
    with RLM(backend=root, environment=environment, max_depth=2) as rlm:
        answer = rlm.completion("go").response
    ok, over = answer.split(" | ")
    assert ok == str(MAX_DEPTH)
    assert over.startswith("rlm_query(): context") and "nested more than" in over


# ------------------------------------------------------------------------- the module


def test_check_json_names_the_place_and_the_reason() -> None:
    cases: list[tuple[Any, str]] = [
        ({"a": [1, {"b": {1, 2}}]}, "ctx['a'][1]['b'] is a set, which is not JSON data"),
        ({"a": [1.0, float("nan")]}, "ctx['a'][1] is nan, which JSON cannot carry"),
        ([{3: "x"}], "ctx[0] has the non-str key 3; JSON object keys must be str"),
        (cyclic_values()[0], "ctx[0] contains itself (a reference cycle)"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError) as caught:
            check_json(value, "ctx", error=ValueError)
        assert str(caught.value).startswith(message)
    with pytest.raises(TypeError, match=r"ctx\[0\]\[0\]\[0\]\[0\]\.\.\.\[0\]"):
        check_json(nested(MAX_DEPTH + 1), "ctx")  # a place 500 levels down, named by its ends


def test_a_shared_container_is_not_a_cycle_and_is_copied_apart() -> None:
    shared = {"k": ["v"]}
    value = {"a": shared, "b": (shared, shared)}
    copied = json_copy(value)
    assert copied == {"a": shared, "b": [shared, shared]}
    copied["a"]["k"].append("changed")
    assert shared == {"k": ["v"]} and copied["b"][0] == {"k": ["v"]}


def test_json_copy_makes_plain_json_data() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    copied = json_copy({Name("key"): (Colour.RED, Name("text"), True, None, 2.5)})
    assert copied == {"key": [1, "text", True, None, 2.5]}
    (key,) = copied
    assert type(key) is str and [type(v) for v in copied["key"][:2]] == [int, str]
    assert json.loads(json.dumps(copied)) == copied


def test_to_jsonable_converts_sets_tuples_objects_and_never_fails() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    loop: list[Any] = [1]
    loop.append(loop)
    value = {
        "tuple": (1, ("x", None)),
        "set": {3},
        "object": Thing(),
        "broken": Broken(),
        "inf": float("-inf"),
        7: "int key",
        "loop": loop,
    }
    assert to_jsonable(value) == {
        "tuple": [1, ["x", None]],
        "set": "{3}",
        "object": "a thing",
        "broken": "<unprintable Broken>",
        "inf": "-inf",
        "7": "int key",
        "loop": [1, "[1, [...]]"],
    }
    deep = to_jsonable(nested(MAX_DEPTH + 5))
    for _ in range(MAX_DEPTH):
        deep = deep[0]
    assert deep == "..."


def test_a_cyclic_local_is_logged_not_a_recursion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    logged = REPLResult(locals={"loop": loop, "fn": len, "deep": nested(2000)}).to_dict()
    assert logged["locals"]["loop"] == ["[[...]]"]
    assert logged["locals"]["fn"] == "<builtin_function_or_method 'len'>"
    json.dumps(logged)
