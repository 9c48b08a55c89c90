"""Test your own RLM pipeline offline with ScriptedLM: no key, no network, deterministic.

    python examples/offline_testing.py

`ScriptedLM` answers from a list (in order) or a function of the messages; its `calls` keep
what it was asked, so a test can assert on the prompts as well as on the answer.
"""

from __future__ import annotations

from rlm import RLM
from rlm.core.types import Message

FENCE = "```"


def root_script() -> list[str]:
    return [
        f"{FENCE}repl\nwords = context.split()\nprint(len(words))\n{FENCE}",
        f"{FENCE}repl\nlabel = llm_query('Classify: ' + ' '.join(words[:20]))\n"
        f"FINAL(label)\n{FENCE}",
    ]


def classifier(messages: list[Message]) -> str:
    return "positive" if "great" in messages[-1]["content"] else "negative"


def main() -> None:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root_script()},
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "classifier", "responses": classifier}],
    )
    with rlm:
        out = rlm.completion("what a great product " * 1000, root_prompt="Sentiment?")
    assert out.response == "positive", out.response
    assert out.usage_summary.model_usage_summaries["classifier"].total_calls == 1
    print("pipeline test passed:", out.response, f"({out.iterations} turns)")


if __name__ == "__main__":
    main()
