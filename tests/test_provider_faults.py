"""Provider faults through whole RLM runs: the official `openai` client against the simulator.

- 30% of requests fail (429 with Retry-After, 500, connection resets, stalls past the client
  timeout) across a run whose code makes 256 batched sub-calls: every call is answered.
- A provider that stays down: each sub-call hands the code a typed error string, the run still
  ends with a stop_reason, and a root provider that is down ends the run with "error".
- Nothing hangs: a stalled provider, a stalled sub-call or a cell that never stops all end at
  `max_timeout`, in the in-process and the isolated environments alike.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rlm import RLM
from rlm.core.types import RLMChatCompletion
from rlm.errors import TimeoutExceededError
from rlm.testing import FaultPlan, ProviderSimulator, SimRequest

pytestmark = pytest.mark.timeout(240)

FENCE = "```"
ENVIRONMENTS = ["local", "process"]


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def openai_kwargs(sim: ProviderSimulator, model: str, **overrides: Any) -> dict[str, Any]:
    """Short client timeout and small retry delays: faults cost milliseconds, not minutes."""
    kwargs: dict[str, Any] = {
        "model_name": model,
        "base_url": sim.openai_base_url,
        "api_key": "sim-not-a-real-key",
        "timeout": 0.5,
        "max_retries": 10,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.1,
    }
    kwargs.update(overrides)
    return kwargs


BATCH_CODE = repl(
    "prompts = [f'q{i}' for i in range(256)]\n"
    "answers = llm_query_batched(prompts)\n"
    "bad = [i for i, a in enumerate(answers) if a != f'A:q{i}']\n"
    "print(len(answers), bad[:5])\n"
    "answer['content'] = f'bad={bad}'\n"
    "answer['ready'] = True"
)


def sim_reply(request: SimRequest) -> str:
    """Root turns carry the RLM system prompt; sub-calls are a single user message."""
    if request.system:
        return BATCH_CODE
    return "A:" + request.messages[-1]["content"]


@pytest.fixture
def flaky_sim() -> Iterator[ProviderSimulator]:
    plan = FaultPlan(
        rate=0.3, kinds=("429", "500", "reset", "timeout"), retry_after=0.01, timeout_seconds=60
    )
    with ProviderSimulator(sim_reply, faults=plan) as sim:
        yield sim


def test_thirty_percent_faults_over_256_batched_calls_are_all_answered(
    flaky_sim: ProviderSimulator,
) -> None:
    started = time.monotonic()
    with RLM(
        backend="openai",
        backend_kwargs=openai_kwargs(flaky_sim, "root-model"),
        other_backends=["openai"],
        other_backend_kwargs=[openai_kwargs(flaky_sim, "sub-model")],
        environment="local",
        max_timeout=180,
    ) as rlm:
        out = rlm.completion("a context", root_prompt="ask 256 questions")
    elapsed = time.monotonic() - started
    stats = flaky_sim.stats
    faults = stats["faults"]
    print(f"\n[faults] {stats['requests']} requests, faults {faults}, {elapsed:.1f} s")
    assert out.stop_reason == "final_answer", (out.stop_reason, out.error)
    assert out.response == "bad=[]"
    sub_calls = [r for r in flaky_sim.requests if not r.system]
    assert {r.messages[-1]["content"] for r in sub_calls} == {f"q{i}" for i in range(256)}
    # The faults really happened, of every kind, at about the planned rate.
    assert set(faults) == {"429", "500", "reset", "timeout"}
    assert 0.2 < sum(faults.values()) / stats["requests"] < 0.4
    assert stats["requests"] == len(flaky_sim.requests) >= 257 + sum(faults.values())
    # Usage counts every answered call once (the root turn and the 256 sub-calls).
    assert out.usage_summary.total_calls == 257


def run_with_sub_backend_down(environment: str, sim: ProviderSimulator) -> RLMChatCompletion:
    code = (
        "import json\n"
        "one = llm_query('q')\n"
        "many = llm_query_batched(['a', 'b', 'c'])\n"
        "print(json.dumps([one, many]))\n"
        "answer['content'] = json.dumps([one, many])\n"
        "answer['ready'] = True"
    )
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": [repl(code)]},
        other_backends=["openai"],
        other_backend_kwargs=[openai_kwargs(sim, "sub-model", max_retries=2)],
        environment=environment,
        environment_kwargs={"timeout": 60},
        max_timeout=120,
    ) as rlm:
        return rlm.completion("ctx")


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_sub_provider_that_stays_down_gives_each_call_a_typed_error(environment: str) -> None:
    plan = FaultPlan(rate=1.0, kinds=("500", "reset", "timeout"), timeout_seconds=60, seed=3)
    with ProviderSimulator("never", faults=plan) as sim:
        started = time.monotonic()
        out = run_with_sub_backend_down(environment, sim)
        elapsed = time.monotonic() - started
        attempts = sim.stats["requests"]
        faults = sim.stats["faults"]
    assert out.stop_reason == "final_answer", (out.stop_reason, out.error)
    one, many = json.loads(out.response)
    for text in [one, *many]:
        assert text.startswith("Error: ProviderError: "), text
    assert len(many) == 3
    assert attempts == 4 * 3  # four calls, each tried 1 + max_retries (2) times
    assert set(faults) == {"500", "reset", "timeout"}
    assert elapsed < 60, elapsed  # retries are bounded (client timeout 0.5 s, tiny delays)


def test_a_root_provider_that_stays_down_ends_the_run_with_error() -> None:
    plan = FaultPlan(rate=1.0, kinds=("500",))
    with ProviderSimulator("never", faults=plan) as sim:
        with RLM(
            backend="openai",
            backend_kwargs=openai_kwargs(sim, "root-model", max_retries=3),
            environment="local",
        ) as rlm:
            out = rlm.completion("ctx")
        attempts = sim.stats["requests"]
    assert out.stop_reason == "error"
    assert out.error is not None and out.error.startswith("ProviderError: ")
    assert "500" in out.error
    assert attempts == 4


STALL_CASES = {
    # The root call stalls: the provider never answers and the client would wait 60 s.
    "root-stalls": ("stall", None),
    # A sub-call from a cell stalls the same way.
    "subcall-stalls": ("ok", repl("print(llm_query('this one never comes back'))")),
    # A cell that never stops, with a per-cell timeout far beyond max_timeout.
    "cell-never-stops": ("ok", repl("while True:\n    pass")),
}


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("case", sorted(STALL_CASES))
def test_max_timeout_always_ends_the_run(environment: str, case: str) -> None:
    root_mode, code = STALL_CASES[case]
    plan = FaultPlan(rate=1.0, kinds=("timeout",), timeout_seconds=120)
    with ProviderSimulator("x", faults=plan) as stalled:
        if root_mode == "stall":
            backend, backend_kwargs = "openai", openai_kwargs(stalled, "root", timeout=60.0)
        else:
            backend, backend_kwargs = "scripted", {"model_name": "root", "responses": [code]}
        # A cell's deadline is the smaller of its own timeout and what the run has left, in
        # every environment: the local cell is interrupted, the process worker killed.
        cell_timeout = 60
        started = time.monotonic()
        with (
            RLM(
                backend=backend,
                backend_kwargs=backend_kwargs,
                other_backends=["openai"],
                other_backend_kwargs=[openai_kwargs(stalled, "sub", timeout=60.0, max_retries=0)],
                environment=environment,
                environment_kwargs={"timeout": cell_timeout},
                max_timeout=1,
            ) as rlm,
            pytest.raises(TimeoutExceededError) as caught,
        ):
            rlm.completion("ctx")
        elapsed = time.monotonic() - started
    out = caught.value.completion
    assert out.stop_reason == "max_timeout", (out.stop_reason, out.error)
    assert caught.value.timeout == 1
    assert elapsed < 1 + 15, elapsed  # the limit, plus generous room for cleanup
    if environment == "process":
        assert not _worker_processes_of(os.getpid())


def _worker_processes_of(host_pid: int) -> list[int]:
    """Sandbox workers that are still children of this process."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == host_pid and fields[0] != "Z" and b"rlm.runtime.worker" in cmdline:
            found.append(int(name))
    return found
