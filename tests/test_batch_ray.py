"""`rlm batch` on a real Ray cluster started on this machine by the test.

The model is the provider simulator in this process; the Ray workers reach it over HTTP like a
real provider. A worker is killed mid-batch with SIGKILL to check that nothing is lost and
nothing is written twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_batch import lines_of, reply, spec_of, tasks_of

from rlm.batch import RLMPredictor, run_batch
from rlm.testing import ProviderSimulator

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for the module; its address is handed to the CLI tests."""
    context = ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


def worker_pids() -> list[int]:
    """Live Ray worker processes running our actor (Ray sets their process title)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"ray::CompletionWorker" in cmdline:
            pids.append(int(entry))
    return pids


def test_forty_tasks_on_ray_are_each_answered_once(cluster: str, tmp_path: Path) -> None:
    with ProviderSimulator(reply=reply) as sim:
        out = tmp_path / "r.jsonl"
        results = list(
            run_batch(tasks_of(40), spec_of(sim), executor="ray", concurrency=4, out=out)
        )
        rows = lines_of(out)
        assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
        assert sorted(r.id for r in results) == sorted(r["id"] for r in rows)
        for row in rows:
            assert row["response"] == "DOC " + row["id"].removeprefix("t")
        assert len(sim.requests) == 80
        # Resume on the finished batch: no provider request at all.
        assert (
            list(run_batch(tasks_of(40), spec_of(sim), executor="ray", out=out, resume=True)) == []
        )
        assert len(sim.requests) == 80


def test_a_worker_killed_mid_batch_loses_nothing(cluster: str, tmp_path: Path) -> None:
    killed: list[int] = []
    lock = threading.Lock()

    def killing_reply(request: Any) -> str:
        text = request.messages[-1]["content"]
        with lock:
            if not killed and isinstance(text, str) and "doc 9" in text:
                pids = worker_pids()
                if pids:  # every worker is busy: whichever dies loses a task in flight
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
        return reply(request)

    with ProviderSimulator(reply=killing_reply, latency=0.2) as sim:
        out = tmp_path / "r.jsonl"
        results = list(
            run_batch(tasks_of(20), spec_of(sim), executor="ray", concurrency=3, out=out)
        )
    assert killed, "no worker was killed"
    rows = lines_of(out)
    assert sorted(r["id"] for r in rows) == sorted(f"t{i}" for i in range(20))
    assert all(r["error"] is None for r in rows), [r for r in rows if r["error"]]
    assert max(r.attempts for r in results) == 2  # the lost task ran again, on a new worker


def test_cli_joins_a_cluster_by_address(cluster: str, tmp_path: Path) -> None:
    with ProviderSimulator(reply=reply) as sim:
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("\n".join(json.dumps(t) for t in tasks_of(6)) + "\n")
        out = tmp_path / "out.jsonl"
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlm.cli",
                "batch",
                str(tasks),
                "--out",
                str(out),
                "--ray-address",
                cluster,
                "--ray-env",
                "OPENAI_API_KEY",
                "--backend",
                "openai",
                "--model",
                "gpt-4o-mini",
                "--backend-arg",
                f"base_url={sim.openai_base_url}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(r["response"] for r in lines_of(out)) == [f"DOC {i}" for i in range(6)]


def test_ray_data_map_batches(cluster: str) -> None:
    data = pytest.importorskip("ray.data")
    with ProviderSimulator(reply=reply) as sim:
        dataset = data.from_items(
            [{"id": f"r{i}", "context": f"row {i}", "root_prompt": "upper"} for i in range(6)]
        )
        answered = dataset.map_batches(
            RLMPredictor,
            fn_constructor_kwargs={"spec": spec_of(sim)},
            concurrency=2,
            batch_size=3,
        ).take_all()
    assert sorted(row["response"] for row in answered) == [f"ROW {i}" for i in range(6)]
    assert all(row["stop_reason"] == "final_answer" and row["total_tokens"] > 0 for row in answered)


def test_the_batch_budget_holds_across_ray_workers(cluster: str, tmp_path: Path) -> None:
    from rlm.clients.pricing import register_price

    register_price("batch-priced-model", input=100.0, output=100.0)
    with ProviderSimulator(reply=reply) as sim:
        spec = spec_of(sim)
        spec["backend_kwargs"]["model_name"] = "batch-priced-model"
        spec["backend_kwargs"]["prices"] = {"input": 100.0, "output": 100.0}
        results = list(
            run_batch(
                tasks_of(20),
                spec,
                executor="ray",
                concurrency=4,
                out=tmp_path / "r.jsonl",
                max_budget=0.5,
            )
        )
    spent = sum(r.cost for r in results)
    assert any(r.error and "max_budget" in r.error for r in results)
    assert 0.3 < spent <= 0.5 + 0.08, spent
