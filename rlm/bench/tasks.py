"""The `Task` every benchmark generator returns, and the seeding that makes tasks reproducible.

A task carries what the model sees (`context`, `question`), what it is scored against (`gold`,
`answer_type`) and `hidden` labels that only the oracle's sub-LM and the tests may read. Each
task has its own RNG seeded from (benchmark, length, index, seed), so any one task regenerates
alone and a subset (CI, a quick check) is the same tasks as in the full run.

Lengths are nominal token counts; without a tokenizer we take tokens ≈ characters / 4
(`TOKEN_APPROXIMATION`), and record the approximate count of what was generated.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from rlm.bench.scoring import Scorer, scorer_for

CHARS_PER_TOKEN = 4
TOKEN_APPROXIMATION = "tokens ≈ characters / 4 (no tokenizer)"


def task_rng(benchmark: str, length: int, index: int, seed: int = 0) -> random.Random:
    """One RNG per task: stable across runs, Python versions and other tasks."""
    digest = hashlib.sha256(f"{benchmark}|{length}|{index}|{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def approx_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


# What a results file keeps of a task, besides its id and sizes.
_DESCRIBED = ("benchmark", "length", "index", "seed", "family", "answer_type", "question", "gold")


@dataclass
class Task:
    """One benchmark item.

    `hidden` holds the ground truth the gold was computed from (needle key/value/offset, the
    label of every line, ...). Never show it to the model under test.
    """

    benchmark: str
    length: int  # nominal length in tokens
    index: int
    seed: int
    context: str
    question: str
    gold: str
    answer_type: str  # "substring" | "label" | "user" | "numeric" | "comparison" | "date" | "pairs"
    family: str  # the question family, e.g. "most_common_label"
    hidden: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def scorer(self) -> Scorer:
        return scorer_for(self.answer_type)

    def score(self, prediction: str | None) -> float:
        """Score a prediction against the gold answer with this task's rule, in [0, 1]."""
        return self.scorer(self.gold, prediction or "")

    @property
    def approx_tokens(self) -> int:
        """Token count of the context by the chars/4 rule."""
        return approx_tokens(self.context)

    @property
    def task_id(self) -> str:
        return f"{self.benchmark}-{self.length}-{self.index}"

    def describe(self) -> dict[str, Any]:
        """What a results file records about the task (not the context or hidden labels)."""
        described: dict[str, Any] = {"task_id": self.task_id}
        for name in _DESCRIBED:
            described[name] = getattr(self, name)
        described["context_chars"] = len(self.context)
        described["approx_tokens"] = self.approx_tokens
        return described


def word_list(text: str) -> tuple[str, ...]:
    """A word list written as one "a|b|c" string (compact to read, one tuple to sample)."""
    return tuple(text.split("|"))
