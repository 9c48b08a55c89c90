"""Pipelining from REPL code: `llm_query_async` sends at once, so calls overlap each other and
the code that runs while they are in flight."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from overlap import Overlap

from rlm import RLM
from rlm.testing import ProviderSimulator, SimRequest

pytestmark = pytest.mark.timeout(120)

FENCE = "```"
ROOT = Path(__file__).resolve().parent.parent


def run_code(code: str, sub: ProviderSimulator, **kwargs: Any) -> Any:
    """Run one cell of `code` as the root's program; sub-calls go to `sub` over HTTP."""
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": [f"{FENCE}repl\n{code}\n{FENCE}"]},
        other_backends=["openai"],
        other_backend_kwargs=[{"model_name": "s", "base_url": sub.openai_base_url, "api_key": "x"}],
        **kwargs,
    )
    with rlm:
        out = rlm.completion("ctx")
    assert out.stop_reason == "final_answer", out.metadata
    return out.value


def test_two_async_calls_are_in_flight_together() -> None:
    both = Overlap(hold=2)  # the provider answers neither until both are at it

    def reply(request: SimRequest) -> str:
        with both:
            return str(request.messages[-1]["content"]) + "!"

    with ProviderSimulator(reply) as sub:
        value = run_code(
            "a = llm_query_async('one')\nb = llm_query_async('two')\n"
            "FINAL([a.result(), b.result()])",
            sub,
        )
        assert value == ["one!", "two!"]
        assert sub.stats["requests"] == 2
        assert sub.stats["max_in_flight"] == 2 and both.peak == 2 and not both.broken


def test_async_call_does_not_block_the_code_that_follows() -> None:
    released = threading.Event()

    def reply(request: SimRequest) -> str:
        # Answers only once the cell has run past the call: a blocking call would wait here
        # for the whole timeout and answer "blocked".
        return "overlapped" if released.wait(20) else "blocked"

    with ProviderSimulator(reply) as sub:
        value = run_code(
            "f = llm_query_async('q')\nrelease()\nFINAL(f.result())",
            sub,
            custom_tools={"release": released.set},
        )
    assert value == "overlapped"


def test_as_completed_yields_every_answer_and_errors_stay_strings() -> None:
    def reply(request: SimRequest) -> str:
        prompt = request.messages[-1]["content"]
        if prompt == "bad":
            raise ValueError("no answer for you")
        return prompt.upper()

    code = (
        "import concurrent.futures as cf\n"
        "pending = {llm_query_async(p): p for p in ['a', 'b', 'bad', 'c']}\n"
        "got = sorted((pending[f], f.result()) for f in cf.as_completed(pending, timeout=60))\n"
        "FINAL_VAR('got')"
    )
    with ProviderSimulator(reply, latency=0.05) as sub:
        value = run_code(code, sub)
    assert [p for p, _ in value] == ["a", "b", "bad", "c"]
    assert dict(value)["a"] == "A" and dict(value)["c"] == "C"
    assert dict(value)["bad"].startswith("Error: ") and "no answer for you" in dict(value)["bad"]


def test_pipelining_example_shows_overlap() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipelining.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    assert int(lines["sub-calls in flight at once"]) >= 2
    assert lines["stop reason"].strip() == "final_answer"
