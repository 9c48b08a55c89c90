"""`rlm batch` and `rlm.batch.run_batch` in this process: tasks in, one result each out.

The model is the provider simulator over real HTTP (OpenAI wire): a root turn answers with code
that upper-cases the context through one `llm_query`, so every answer can be checked and every
provider request counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.batch import BadTaskLine, BatchLedger, read_tasks, run_batch
from rlm.batch.results import ResultFile
from rlm.errors import BudgetExceededError, ConfigurationError
from rlm.testing import ProviderSimulator

pytestmark = pytest.mark.timeout(180)

ROOT_CODE = (
    "```repl\nanswer['content'] = llm_query('Upper: ' + context)\nanswer['ready'] = True\n```"
)


def reply(request: Any) -> str:
    last = request.messages[-1]["content"]
    if isinstance(last, str) and last.startswith("Upper: "):
        return last.removeprefix("Upper: ").upper()
    return ROOT_CODE


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply=reply) as simulator:
        yield simulator


def spec_of(sim: ProviderSimulator, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "openai",
        "backend_kwargs": {
            "model_name": "gpt-4o-mini",
            "base_url": sim.openai_base_url,
            "api_key": "sk-test",
        },
        **extra,
    }


def tasks_of(n: int) -> list[dict[str, Any]]:
    return [{"id": f"t{i}", "context": f"doc {i}", "root_prompt": "upper"} for i in range(n)]


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- the task file


def test_bad_lines_are_reported_with_their_number(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("from a file")
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "context": "x"}),
                "{not json",
                json.dumps({"id": "b", "context_file": "doc.txt", "max_iterations": 3}),
                json.dumps({"id": "a", "context": "again"}),
                json.dumps({"id": "c"}),
                json.dumps({"id": "d", "context": "x", "colour": "red"}),
                "",
                json.dumps({"id": 7, "context": [1, 2]}),
            ]
        )
    )
    with pytest.raises(BadTaskLine) as first:
        read_tasks(path)
    assert first.value.line == 2 and "not JSON" in str(first.value)
    tasks, bad = read_tasks(path, on_bad_line="skip")
    assert [t.id for t in tasks] == ["a", "b", "7"]
    assert [b.line for b in bad] == [2, 4, 5, 6]
    assert "duplicate id 'a'" in str(bad[1]) and "colour" in str(bad[3])
    assert tasks[1].load_context() == "from a file"  # relative to the tasks file's folder
    assert tasks[1].overrides == {"max_iterations": 3}


def test_a_missing_context_file_is_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"id": "a", "context_file": "nope.txt"}) + "\n")
    with pytest.raises(BadTaskLine, match=r"line 1: context_file .*nope\.txt.* does not exist"):
        read_tasks(path)


# ------------------------------------------------------------------------ running in process


def test_forty_tasks_are_each_answered_exactly_once(sim: ProviderSimulator, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    seen = list(run_batch(tasks_of(40), spec_of(sim), out=out, concurrency=8))
    assert sorted(r.id for r in seen) == sorted(f"t{i}" for i in range(40))
    written = lines_of(out)
    assert len(written) == 40 and len({r["id"] for r in written}) == 40
    for row in written:
        number = row["id"].removeprefix("t")
        assert row["response"] == f"DOC {number}"
        assert row["stop_reason"] == "final_answer" and row["error"] is None
        assert row["usage"]["total_input_tokens"] > 0
        assert set(row) >= {"id", "response", "value", "stop_reason", "usage", "execution_time"}
    assert len(sim.requests) == 80  # one root turn and one sub-call per task


def test_resume_on_a_finished_batch_makes_no_request(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    list(run_batch(tasks_of(6), spec_of(sim), out=out))
    before = len(sim.requests)
    assert list(run_batch(tasks_of(6), spec_of(sim), out=out, resume=True)) == []
    assert len(sim.requests) == before
    assert len(lines_of(out)) == 6


def test_resume_runs_only_what_is_missing_and_drops_a_cut_line(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    list(run_batch(tasks_of(3), spec_of(sim), out=out))
    with out.open("a") as handle:  # a crash in the middle of writing a fourth line
        handle.write('{"id": "t3", "respo')
    again = list(run_batch(tasks_of(6), spec_of(sim), out=out, resume=True))
    assert sorted(r.id for r in again) == ["t3", "t4", "t5"]
    rows = lines_of(out)
    assert sorted(r["id"] for r in rows) == [f"t{i}" for i in range(6)]


def test_an_existing_result_file_is_not_mixed_into(sim: ProviderSimulator, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps({"id": "old"}) + "\n")
    with pytest.raises(ConfigurationError, match="--resume"):
        run_batch(tasks_of(1), spec_of(sim), out=out)


def test_a_failing_task_is_written_with_its_error_and_others_go_on(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    tasks = [*tasks_of(3), {"id": "bad", "context": "x", "model": "no-such-model"}]
    sim.known_models = frozenset({"gpt-4o-mini"})
    results = {r.id: r for r in run_batch(tasks, spec_of(sim), out=tmp_path / "r.jsonl")}
    assert results["bad"].error is not None and "404" in results["bad"].error
    assert all(results[f"t{i}"].ok for i in range(3))


def test_per_task_overrides_reach_the_run(sim: ProviderSimulator, tmp_path: Path) -> None:
    tasks = [{"id": "m", "context": "doc", "model": "gpt-4o"}]
    [result] = run_batch(tasks, spec_of(sim), out=None)
    assert result.ok
    assert "gpt-4o" in result.usage["model_usage_summaries"]
    assert {r.model for r in sim.requests} == {"gpt-4o"}


def test_the_batch_budget_is_one_ledger_over_every_task(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    from rlm.clients.pricing import register_price

    register_price("batch-priced-model", input=100.0, output=100.0)  # $0.0001 per token
    spec = spec_of(sim)
    spec["backend_kwargs"]["model_name"] = "batch-priced-model"
    out = tmp_path / "r.jsonl"
    results = list(run_batch(tasks_of(30), spec, out=out, concurrency=6, max_budget=0.5))
    spent = sum(r.cost for r in results)
    stopped = [r for r in results if r.error and "max_budget" in r.error]
    assert stopped, "the batch went on after its budget ran out"
    # One call's worth of overshoot at most: a root turn here is about 700 tokens, $0.07.
    assert 0.3 < spent <= 0.5 + 0.08, spent
    assert len(lines_of(out)) == 30  # stopped tasks are written too, with the limit's error


def test_the_ledger_refuses_once_tripped() -> None:
    ledger = BatchLedger(max_budget=1.0)
    assert ledger.reserve(10, 0.6) == "admitted"
    assert ledger.reserve(10, 0.6) == "wait"  # does not fit while the first is in flight
    ledger.settle(10, 0.6, 10, 1.2)
    with pytest.raises(BudgetExceededError):
        ledger.reserve(10, 0.1)


# ---------------------------------------------------------------------------- the command


def _cli_env(sim: ProviderSimulator) -> dict[str, str]:
    env = dict(os.environ)
    env["OPENAI_API_KEY"] = "sk-test"
    return env


def _cli(sim: ProviderSimulator, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlm.cli",
        "batch",
        *args,
        "--backend",
        "openai",
        "--model",
        "gpt-4o-mini",
        "--backend-arg",
        f"base_url={sim.openai_base_url}",
    ]


def write_tasks(path: Path, rows: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + extra)
    return path


def test_cli_runs_a_batch_and_reports(sim: ProviderSimulator, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", tasks_of(5))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        _cli(sim, str(tasks), "--out", str(out), "--log-dir", str(tmp_path / "logs")),
        env=_cli_env(sim),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "5/5 done" in done.stderr and "0 failed" in done.stderr
    rows = lines_of(out)
    assert sorted(r["response"] for r in rows) == [f"DOC {i}" for i in range(5)]
    logs = sorted((tmp_path / "logs").glob("*.jsonl"))
    assert len(logs) == 5 and {r["log_file"] for r in rows} == {str(p) for p in logs}


def test_cli_bad_line_stops_or_is_skipped(sim: ProviderSimulator, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", tasks_of(2), extra='{"id": "x"}\n')
    out = tmp_path / "out.jsonl"
    stop = subprocess.run(
        _cli(sim, str(tasks), "--out", str(out)),
        env=_cli_env(sim),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 2 and "line 3" in stop.stderr and not out.exists()
    skip = subprocess.run(
        _cli(sim, str(tasks), "--out", str(out), "--on-bad-line", "skip"),
        env=_cli_env(sim),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert skip.returncode == 1  # a skipped line is a failure to report, not a success
    assert "skipped" in skip.stderr and "line 3" in skip.stderr
    assert len(lines_of(out)) == 2


def test_cli_ctrl_c_keeps_finished_results_and_resume_finishes(tmp_path: Path) -> None:
    with ProviderSimulator(reply=reply, latency=0.3) as sim:
        tasks = write_tasks(tmp_path / "tasks.jsonl", tasks_of(30))
        out = tmp_path / "out.jsonl"
        proc = subprocess.Popen(
            _cli(sim, str(tasks), "--out", str(out), "-j", "2"),
            env=_cli_env(sim),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(lines_of(out)) < 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
        finished = lines_of(out)
        assert 3 <= len(finished) < 30
        before = len(sim.requests)
        resumed = subprocess.run(
            _cli(sim, str(tasks), "--out", str(out), "--resume", "-j", "8"),
            env=_cli_env(sim),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stderr
        rows = lines_of(out)
        assert sorted(r["id"] for r in rows) == sorted(f"t{i}" for i in range(30))
        assert len(sim.requests) - before == 2 * (30 - len(finished))


def test_results_file_writes_each_id_once(tmp_path: Path) -> None:
    from rlm.batch.results import BatchResult

    with ResultFile(tmp_path / "r.jsonl") as results:
        assert results.write(BatchResult(id="a", response="1"))
        assert not results.write(BatchResult(id="a", response="2"))
    assert [r["response"] for r in lines_of(tmp_path / "r.jsonl")] == ["1"]


def test_a_repeated_id_in_an_iterable_of_tasks_is_refused_before_any_run(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    tasks = [*tasks_of(2), {"id": "t0", "context": "again"}]
    with pytest.raises(BadTaskLine, match=r"line 3: duplicate id 't0'"):
        list(run_batch(tasks, spec_of(sim), out=tmp_path / "r.jsonl"))
    assert sim.requests == []


def test_a_result_line_reads_back_as_the_same_result(tmp_path: Path) -> None:
    from rlm.batch.results import BatchResult

    result = BatchResult(
        id="q1",
        response="x",
        value={"n": 1},
        stop_reason="max_tokens",
        usage={"total_input_tokens": 3},
        execution_time=1.5,
        error="stopped: max_tokens",
        attempts=2,
        log_file="logs/q1.jsonl",
    )
    assert BatchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    # An old or hand-written line without the optional keys takes the defaults.
    assert BatchResult.from_dict({"id": 7}) == BatchResult(id="7")


def test_a_dropped_predictor_closes_its_rlms(sim: ProviderSimulator) -> None:
    import gc

    from rlm.batch import RLMPredictor

    predictor = RLMPredictor(spec_of(sim))
    out = predictor({"context": ["a", "b"], "id": ["1", "2"]})
    assert out["response"] == ["A", "B"] and out["error"] == ["", ""]
    runner = predictor.runner
    (rlm,) = runner._rlms.values()
    closed: list[bool] = []
    original_close = rlm.close
    rlm.close = lambda: (closed.append(True), original_close())[1]  # type: ignore[method-assign]
    del predictor, out
    gc.collect()
    assert closed == [True] and runner._rlms == {}


def test_a_predictor_closed_twice_closes_once(sim: ProviderSimulator) -> None:
    from rlm.batch import RLMPredictor

    predictor = RLMPredictor(spec_of(sim))
    predictor({"context": ["a"]})
    (rlm,) = predictor.runner._rlms.values()
    calls: list[bool] = []
    original_close = rlm.close
    rlm.close = lambda: (calls.append(True), original_close())[1]  # type: ignore[method-assign]
    predictor.close()
    predictor.close()
    assert calls == [True]
