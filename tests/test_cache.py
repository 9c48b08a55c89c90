"""The sub-call cache: a re-run is provider-free, hits are counted, the file is shared safely."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM, ConfigurationError
from rlm.clients.scripted import ScriptedLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Usage, UsageLedger
from rlm.lm_service.cache import SubcallCache, cache_key, default_cache_path
from rlm.logger import RLMLogger
from rlm.testing import ProviderSimulator

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"
ROOT_SCRIPT = [
    f"{FENCE}repl\nparts = [llm_query(f'summarise {{w}}') for w in context.split()]\n{FENCE}",
    f"{FENCE}repl\nFINAL(' | '.join(parts))\n{FENCE}",
]


def scripted_rlm(
    cache: Any, root: Any = None, sub: Any = None
) -> tuple[RLM, ScriptedLM, ScriptedLM]:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": ROOT_SCRIPT if root is None else root},
        other_backends=["scripted"],
        other_backend_kwargs=[
            {
                "model_name": "sub",
                "responses": sub or (lambda messages: messages[-1]["content"].upper()),
                "prices": {"input": 1.0, "output": 2.0},
            }
        ],
        cache=cache,
        logger=RLMLogger(),  # completion.metadata holds the trajectory
    )
    root_lm = rlm.root_client
    sub_lm = rlm.other_clients[0]
    assert isinstance(root_lm, ScriptedLM) and isinstance(sub_lm, ScriptedLM)
    return rlm, root_lm, sub_lm


def test_rerun_makes_zero_provider_calls_and_counts_hits(tmp_path: Path) -> None:
    cache = SubcallCache(tmp_path / "c.sqlite3")
    rlm, root, sub = scripted_rlm(cache)
    with rlm:
        first = rlm.completion("alpha beta gamma")
        calls = (len(root.calls), len(sub.calls))
        assert calls == (2, 3)
        assert first.usage_summary.total_cache_hits == 0
        # The root script is used up: any provider call now would fail the run.
        second = rlm.completion("alpha beta gamma")
    assert (len(root.calls), len(sub.calls)) == calls
    assert second.response == first.response == "SUMMARISE ALPHA | SUMMARISE BETA | SUMMARISE GAMMA"
    assert second.stop_reason == "final_answer"
    summary = second.usage_summary
    assert summary.total_cache_hits == summary.total_calls == 5
    assert summary.model_usage_summaries["sub"].cache_hits == 3
    assert summary.total_cost == 0.0  # hits cost nothing
    assert first.usage_summary.total_cost is not None and first.usage_summary.total_cost > 0
    # Token counts are those of the original calls, so limits behave as on the first run.
    assert summary.total_input_tokens == first.usage_summary.total_input_tokens
    assert second.metadata is not None
    iterations = second.metadata["iterations"]
    records = [c for it in iterations for b in it["code_blocks"] for c in b["result"]["rlm_calls"]]
    assert [r["response"] for r in records] == [
        "SUMMARISE ALPHA",
        "SUMMARISE BETA",
        "SUMMARISE GAMMA",
    ]
    assert cache.hits == 5 and len(cache) == 5


def test_a_different_request_is_a_miss(tmp_path: Path) -> None:
    cache = SubcallCache(tmp_path / "c.sqlite3")
    rlm, _, sub = scripted_rlm(cache, root=ROOT_SCRIPT * 2)
    with rlm:
        rlm.completion("alpha beta")
        out = rlm.completion("alpha delta")  # new context: new root prompt, one new sub-call
    assert out.response == "SUMMARISE ALPHA | SUMMARISE DELTA"
    assert [c[-1]["content"] for c in sub.calls] == [
        "summarise alpha",
        "summarise beta",
        "summarise delta",
    ]
    assert out.usage_summary.model_usage_summaries["sub"].cache_hits == 1


def test_keys_cover_model_endpoint_messages_and_sampling() -> None:
    base: dict[str, Any] = {
        "provider": "openai",
        "model": "m",
        "endpoint": "http://a/v1",
        "prompt": "hi",
        "sampling": {"temperature": 0.0},
    }
    key = cache_key(**base)
    assert key is not None and len(key) == 64
    assert cache_key(**{**base, "prompt": [{"role": "user", "content": "hi"}]}) == key
    changes: list[dict[str, Any]] = [
        {"model": "m2"},
        {"provider": "anthropic"},
        {"endpoint": "http://b/v1"},
        {"prompt": "hi!"},
        {"sampling": {"temperature": 0.5}},
        {"sampling": {}},
    ]
    for change in changes:
        assert cache_key(**{**base, **change}) != key, change
    assert cache_key(**{**base, "sampling": {"b": 1, "a": 2}}) == cache_key(
        **{**base, "sampling": {"a": 2, "b": 1}}
    )
    assert cache_key(**{**base, "sampling": {"x": object()}}) is None  # not JSON: not cached


def test_sampling_arguments_separate_entries(tmp_path: Path) -> None:
    lm = ScriptedLM("m", responses=lambda messages: f"answer {len(lm.calls)}")
    handler = LMHandler(lm, cache=SubcallCache(tmp_path / "c.sqlite3"))
    assert handler.completion("q").text == "answer 1"
    assert handler.completion("q").text == "answer 1"  # a hit
    hot = handler.acomplete("q", depth=0, sampling={"temperature": 1.0})
    from rlm.aio import run_sync

    assert run_sync(hot).text == "answer 2"
    assert len(lm.calls) == 2


def test_corrupt_rows_are_misses_and_get_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = SubcallCache(path)
    good = LMResponse("stored", "m", Usage(3, 4, cost=0.5))
    for key in ("a", "b", "c", "d"):
        cache.put(key, good)
    hit = cache.get("a")
    assert hit == LMResponse("stored", "m", Usage(3, 4, cost=0.0), 0.0, cached=True)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE subcalls SET response = '{not json' WHERE key = 'b'")
        db.execute("UPDATE subcalls SET response = '[1, 2]' WHERE key = 'c'")
        db.execute("""UPDATE subcalls SET response = '{"text": 5}' WHERE key = 'd'""")
    assert cache.get("b") is None and cache.get("c") is None and cache.get("d") is None
    assert cache.misses == 3
    cache.put("b", good)
    assert cache.get("b") is not None


def test_a_run_survives_a_broken_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite3"
    cache = SubcallCache(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE subcalls")
    lm = ScriptedLM("m", responses=["one", "two"])
    handler = LMHandler(lm, cache=cache)
    assert handler.completion("q").text == "one"  # lookup and store fail: logged, not raised
    assert handler.completion("q").text == "two"
    assert "sub-call cache" in caplog.text


def test_two_processes_share_the_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    child = f"""
import json, sys
from rlm import RLM
rlm = RLM(
    backend="scripted",
    backend_kwargs={{"model_name": "root", "responses": {ROOT_SCRIPT!r}}},
    other_backends=["scripted"],
    other_backend_kwargs=[{{"model_name": "sub", "responses": lambda m: m[-1]["content"][::-1]}}],
    cache={str(path)!r},
)
with rlm:
    print(json.dumps(rlm.completion("one two").response))
"""
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    assert expected == "eno esirammus | owt esirammus"
    # This process has no scripted replies left to give: everything must come from the file.
    rlm, root, sub = scripted_rlm(str(path), root=[], sub=[])
    with rlm:
        out = rlm.completion("one two")
    assert out.response == expected
    assert root.calls == [] and sub.calls == []
    assert out.usage_summary.total_cache_hits == 4


def test_concurrent_threads_share_one_cache(tmp_path: Path) -> None:
    cache = SubcallCache(tmp_path / "c.sqlite3")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                key = f"{n}-{i % 10}"
                cache.put(key, LMResponse(key, "m"))
                hit = cache.get(key)
                assert hit is not None and hit.text == key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(cache) == 80


def test_rerun_over_http_makes_no_simulator_requests(tmp_path: Path) -> None:
    code = "r = llm_query('ping')\nFINAL(r)"
    with (
        ProviderSimulator(f"{FENCE}repl\n{code}\n{FENCE}") as root_sim,
        ProviderSimulator("pong") as sub_sim,
    ):
        rlm = RLM(
            backend="openai",
            backend_kwargs={
                "model_name": "r",
                "base_url": root_sim.openai_base_url,
                "api_key": "x",
            },
            other_backends=["openai"],
            other_backend_kwargs=[
                {"model_name": "s", "base_url": sub_sim.openai_base_url, "api_key": "x"}
            ],
            cache=tmp_path / "c.sqlite3",
        )
        with rlm:
            first = rlm.completion("ctx")
            seen = (root_sim.stats["requests"], sub_sim.stats["requests"])
            second = rlm.completion("ctx")
        assert seen == (1, 1)
        assert (root_sim.stats["requests"], sub_sim.stats["requests"]) == seen
    assert first.response == second.response == "pong"
    assert second.usage_summary.total_cache_hits == 2


def test_cache_argument_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_CACHE_PATH", str(tmp_path / "env.sqlite3"))
    assert default_cache_path() == tmp_path / "env.sqlite3"
    made = SubcallCache.of(True)
    assert made is not None and made.path == tmp_path / "env.sqlite3"
    assert SubcallCache.of(None) is None and SubcallCache.of(False) is None
    assert SubcallCache.of(made) is made
    from_path = SubcallCache.of(tmp_path / "p.sqlite3")
    assert from_path is not None and from_path.path == tmp_path / "p.sqlite3"
    with pytest.raises(ConfigurationError, match="cache must be"):
        SubcallCache.of(3)  # type: ignore[arg-type]
    (tmp_path / "not-a-db").write_text("this is not SQLite " * 100)
    with pytest.raises(ConfigurationError, match="cannot open the sub-call cache"):
        SubcallCache(tmp_path / "not-a-db")


def test_ledger_counts_hits_per_model() -> None:
    ledger = UsageLedger()
    ledger.record("m", Usage(1, 1, cost=0.1))
    ledger.record("m", Usage(1, 1, cost=0.0), cached=True)
    summary = ledger.summary()
    assert summary.model_usage_summaries["m"].cache_hits == 1
    assert summary.total_cache_hits == 1 and summary.total_calls == 2
    assert summary.to_dict()["model_usage_summaries"]["m"]["cache_hits"] == 1
