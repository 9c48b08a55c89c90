"""Pipelining: start sub-calls without waiting, so they overlap each other and local work.

    python examples/pipelining.py

In the REPL, `llm_query(prompt)` waits for its answer, while `llm_query_async(prompt)` sends the
request at once and returns a `concurrent.futures.Future` whose `.result()` is the text (or an
"Error: ..." string). A root program can start independent calls, keep computing while they
are in flight, and take the answers as they finish with `concurrent.futures.as_completed`.

Runs offline: rlm's provider simulator plays both models, with 200 ms of latency per sub-call.
The timings printed show four sequential calls taking about four latencies and four pipelined
ones about one.
"""

from __future__ import annotations

import time

from rlm import RLM
from rlm.testing import ProviderSimulator, SimRequest

FENCE = "```"
LATENCY = 0.2
ROOT_CODE = """
import concurrent.futures as cf
import time

parts = context.split("\\n\\n")

started = time.perf_counter()
sequential = [llm_query(f"Summarise: {p}") for p in parts]
timings = {"sequential": time.perf_counter() - started}

started = time.perf_counter()
futures = [llm_query_async(f"Summarise: {p}") for p in parts]  # all four are sent now
words = sum(len(p.split()) for p in parts)  # local work while the calls are in flight
pipelined = [f.result() for f in futures]
timings["pipelined"] = time.perf_counter() - started

started = time.perf_counter()
pending = {llm_query_async(f"Rate {i}: {p}"): i for i, p in enumerate(parts)}
finished = [pending[f] for f in cf.as_completed(pending)]  # in the order answers arrive
timings["as_completed"] = time.perf_counter() - started

assert pipelined == sequential
FINAL_VAR({"timings": timings, "finished": finished, "words": words})
"""
DOCUMENT = "\n\n".join(
    f"Part {i}: " + " ".join(f"w{i}{j}" for j in range(20 + 5 * i)) for i in range(4)
)


def root_model(request: SimRequest) -> str:
    return f"{FENCE}repl\n{ROOT_CODE.strip()}\n{FENCE}"


def sub_model(request: SimRequest) -> str:
    prompt = request.messages[-1]["content"]
    if prompt.startswith("Rate "):
        part = int(prompt.split()[1].rstrip(":"))
        time.sleep(0.1 * (3 - part))  # later parts are rated faster: they finish first
        return f"rating {part}"
    return f"summary of {prompt.split(':')[1].strip()}"


def main() -> None:
    with (
        ProviderSimulator(root_model) as root_sim,
        ProviderSimulator(sub_model, latency=LATENCY) as sub_sim,
    ):
        rlm = RLM(
            backend="openai",
            backend_kwargs={
                "model_name": "root",
                "base_url": root_sim.openai_base_url,
                "api_key": "offline",
            },
            other_backends=["openai"],
            other_backend_kwargs=[
                {"model_name": "sub", "base_url": sub_sim.openai_base_url, "api_key": "offline"}
            ],
        )
        with rlm:
            out = rlm.completion(DOCUMENT)
        in_flight = sub_sim.stats["max_in_flight"]
    result = out.value
    timings = result["timings"]
    print(f"latency per sub-call: {LATENCY:.2f} s")
    print(f"sequential:   4 x llm_query        {timings['sequential']:.2f} s")
    print(f"pipelined:    4 x llm_query_async  {timings['pipelined']:.2f} s")
    print(f"as_completed: 4 x llm_query_async  {timings['as_completed']:.2f} s")
    print(f"answers arrived in the order of parts {result['finished']}")
    print(f"sub-calls in flight at once: {in_flight}")
    print(f"stop reason: {out.stop_reason}")


if __name__ == "__main__":
    main()
