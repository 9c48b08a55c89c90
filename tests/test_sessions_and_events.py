"""Recursion routing, concurrent completions, compaction and the event stream."""

from __future__ import annotations

import asyncio
from typing import Any

from overlap import Overlap

from rlm import RLM
from rlm.core.events import Observer, RunEvent, RunInfo
from rlm.core.types import Message

FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def test_twenty_concurrent_acompletions_in_one_process() -> None:
    # Each root call waits inside the model until all twenty are in: only completions that
    # run at the same time get there; queued ones would leave the peak at 1.
    together = Overlap(hold=20)

    def root(messages: list[Message]) -> str:
        with together:
            return repl("FINAL(context.upper())")

    async def main(rlm: RLM) -> list[str]:
        outs = await asyncio.gather(*[rlm.acompletion(f"doc{i}") for i in range(20)])
        return [o.response for o in outs]

    with RLM(backend="scripted", backend_kwargs={"responses": root}) as rlm:
        answers = asyncio.run(main(rlm))
    assert answers == [f"DOC{i}" for i in range(20)]
    assert together.peak == 20 and not together.broken


def test_depth_backend_map_and_child_model_choice() -> None:
    """Depth 1 children use the depth map's model; model= picks a registered client."""

    def root(messages: list[Message]) -> str:
        return repl(
            "a = rlm_query('Return the square of 3')\n"
            "b = rlm_query('Return the square of 4', model='special')\n"
            "FINAL(a + ',' + b)"
        )

    def child(tag: str) -> Any:
        def reply(messages: list[Message]) -> str:
            if len(messages) == 2:
                return repl(f"n = int(context.split()[-1])\nFINAL('{tag}' + str(n * n))")
            return "FINAL(confused)"

        return reply

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root},
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "special", "responses": child("s")}],
        depth_backends={
            1: {
                "backend": "scripted",
                "backend_kwargs": {"model_name": "d1", "responses": child("d")},
            }
        },
        max_depth=2,
    )
    with rlm:
        out = rlm.completion("ctx")
    assert out.response == "d9,s16"
    models = out.usage_summary.model_usage_summaries
    assert models["d1"].total_calls == 1 and models["special"].total_calls == 1


def test_compaction_summarises_and_keeps_the_transcript_in_history() -> None:
    requests: list[list[Message]] = []

    def root(messages: list[Message]) -> str:
        requests.append(messages)
        last = messages[-1]["content"]
        if "will be compacted" in last:
            return "Summary: I printed filler three times; x holds 5."
        if "compacted into the summary" in last:
            return repl("FINAL(str(x) + ':' + str(len(history)))")
        return repl("x = 5\nprint('filler ' * 200)")

    compactions: list[int] = []

    class Compactions(Observer):
        def on_compaction(self, run: RunInfo, count: int, summary: str) -> None:
            compactions.append(count)

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root},
        observers=[Compactions()],
        compaction=True,
        context_window=2000,
        compaction_threshold_pct=0.8,
    )
    with rlm:
        out = rlm.completion("ctx")
    assert out.stop_reason == "final_answer"
    assert compactions == [1]
    x, history_len = out.response.split(":")
    assert x == "5" and int(history_len) > 4
    after = requests[-1]
    assert after[2]["content"].startswith("Summary:") and len(after) == 4


def test_event_stream_yields_every_kind_then_the_completion() -> None:
    async def collect() -> list[RunEvent]:
        rlm = RLM(
            backend="scripted",
            backend_kwargs={
                "model_name": "root",
                "responses": [repl("r = llm_query('q')"), "FINAL(ok)"],
            },
            other_backends=["scripted"],
            other_backend_kwargs=[{"model_name": "sub", "responses": lambda m: "a"}],
        )
        with rlm:
            return [event async for event in rlm.events("ctx")]

    events = asyncio.run(collect())
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_start" and kinds[-2:] == ["run_end", "completion"]
    for kind in ("iteration_start", "iteration", "subcall_start", "subcall"):
        assert kind in kinds
    assert events[-1].data.response == "ok"
