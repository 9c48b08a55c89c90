"""Quickstart: an RLM answers a question about a document far larger than it reads at once.

    python examples/quickstart.py

With OPENAI_API_KEY set it uses gpt-5-mini (root and sub-calls); without a key it runs offline
against rlm's provider simulator, whose scripted "model" writes the code a good model would.
"""

from __future__ import annotations

import os

from rlm import RLM
from rlm.testing import ProviderSimulator, SimRequest

FENCE = "```"
DOCUMENT = "\n".join(
    f"Day {day}: the weather station logged {12 + day % 7} degrees and {day % 3} mm of rain."
    for day in range(1, 5001)
)
QUESTION = "On how many days was no rain logged?"


def offline_model(request: SimRequest) -> str:
    """Stands in for a real root and sub model; replies depend only on the request."""
    last = request.messages[-1]["content"]
    if last.startswith("How many lines"):
        return str(last.count(" 0 mm"))  # a sub-call: count in its chunk
    if "Output of your code" in last:
        return "FINAL_VAR(total)"
    return (
        "I split the log into chunks and let sub-LLMs count in parallel.\n"
        f"{FENCE}repl\n"
        "lines = context.splitlines()\n"
        "chunks = ['\\n'.join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]\n"
        "counts = llm_query_batched(\n"
        "    [f'How many lines say no rain (0 mm) was logged?\\n{c}' for c in chunks]\n"
        ")\n"
        "total = sum(int(c) for c in counts)\n"
        "print(counts, total)\n"
        f"{FENCE}"
    )


def main() -> None:
    if os.environ.get("OPENAI_API_KEY"):
        settings = {"model_name": "gpt-5-mini"}
        with RLM(backend="openai", backend_kwargs=settings, verbose=True) as rlm:
            out = rlm.completion(DOCUMENT, root_prompt=QUESTION)
    else:
        print("No OPENAI_API_KEY: running against rlm.testing.ProviderSimulator (offline).")
        with ProviderSimulator(offline_model) as sim:
            settings = {"model_name": "simulated", "base_url": sim.openai_base_url, "api_key": "x"}
            with RLM(backend="openai", backend_kwargs=settings) as rlm:
                out = rlm.completion(DOCUMENT, root_prompt=QUESTION)
    print("answer:", out.response)
    print("stop reason:", out.stop_reason, "| expected:", DOCUMENT.count(" 0 mm"))
    for model, usage in out.usage_summary.model_usage_summaries.items():
        print(f"{model}: {usage.total_calls} calls, {usage.total_input_tokens} input tokens")


if __name__ == "__main__":
    main()
