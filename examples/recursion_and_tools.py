"""Child RLMs (max_depth=2), a host-side custom tool, and the live event stream.

    python examples/recursion_and_tools.py

Each `rlm_query` starts a child RLM with its own REPL; the children run in parallel and share
the parent's handler and budget, so their usage is counted in the parent's summary. The tool
`lookup` is a Python function that runs on the host, whatever environment runs the code.
"""

from __future__ import annotations

import asyncio

from rlm import RLM
from rlm.core.types import Message

FENCE = "```"
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima"}


def lookup(country: str) -> str:
    """Capital city of a country (a host-side tool)."""
    return CAPITALS.get(country, "unknown")


def model(messages: list[Message]) -> str:
    """A scripted model: the root fans out to children; each child uses the tool."""
    task = messages[1]["content"]
    if "Which capitals" in task:  # the root
        return (
            f"{FENCE}repl\n"
            "countries = context.split(',')\n"
            "answers = rlm_query_batched([f'Find the capital of {c}' for c in countries])\n"
            "FINAL_VAR('answers')\n"
            f"{FENCE}"
        )
    return f"{FENCE}repl\nFINAL(lookup(context.split()[-1]))\n{FENCE}"  # a child


async def main() -> None:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "scripted", "responses": model},
        max_depth=2,
        custom_tools={"lookup": lookup},
    )
    with rlm:
        async for event in rlm.events("France,Japan,Peru", root_prompt="Which capitals?"):
            if event.kind == "run_start" and event.run is not None:
                print(f"run started at depth {event.run.depth}: {event.run.root_prompt}")
            elif event.kind == "completion":
                print("answer:", event.data.value)


if __name__ == "__main__":
    asyncio.run(main())
