"""Synthetic long-context benchmarks from the RLM paper: S-NIAH, OOLONG and OOLONG-Pairs.

Every generator is seeded and offline: `generate(benchmark, length, index)` rebuilds one task
exactly, anywhere. Lengths are nominal token counts (tokens ≈ characters / 4).

    from rlm.bench import generate_tasks
    for task in generate_tasks("oolong", 131_072, n=5):
        task.context, task.question, task.score("Label: location")

`rlm bench TASK --backend ...` (rlm.bench.cli) runs them through an RLM and a plain LM call;
`--backend oracle` runs them offline with scripted models (rlm.bench.oracle).
"""

from __future__ import annotations

from collections.abc import Callable

from rlm.bench import oolong, oolong_pairs, sniah
from rlm.bench.tasks import CHARS_PER_TOKEN, TOKEN_APPROXIMATION, Task
from rlm.errors import ConfigurationError

__all__ = [
    "BENCHMARKS",
    "CHARS_PER_TOKEN",
    "DEFAULT_LENGTHS",
    "TOKEN_APPROXIMATION",
    "Task",
    "benchmark_name",
    "generate",
    "generate_tasks",
]

BENCHMARKS: dict[str, Callable[..., Task]] = {
    sniah.BENCHMARK: sniah.generate,
    oolong.BENCHMARK: oolong.generate,
    oolong_pairs.BENCHMARK: oolong_pairs.generate,
}

# The paper's main-table lengths (v2 Table 1: OOLONG 131K, OOLONG-Pairs 32K); S-NIAH at 2^13.
DEFAULT_LENGTHS: dict[str, tuple[int, ...]] = {
    sniah.BENCHMARK: (8192,),
    oolong.BENCHMARK: (131_072,),
    oolong_pairs.BENCHMARK: (32_768,),
}


def benchmark_name(name: str) -> str:
    """The canonical benchmark name ("oolong-pairs" -> "oolong_pairs")."""
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ConfigurationError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key


def generate(benchmark: str, length: int, index: int, *, seed: int = 0) -> Task:
    """Task `index` of `benchmark` at `length` tokens (the same task every time)."""
    if length < 1 or index < 0:
        raise ConfigurationError(f"length must be >= 1 and index >= 0, got {length}, {index}")
    return BENCHMARKS[benchmark_name(benchmark)](length, index, seed=seed)


def generate_tasks(
    benchmark: str, length: int, n: int, *, seed: int = 0, start: int = 0
) -> list[Task]:
    """Tasks `start` .. `start + n - 1` of `benchmark` at `length` tokens."""
    return [generate(benchmark, length, i, seed=seed) for i in range(start, start + n)]
