"""Run benchmark tasks as an RLM and as a plain LM call; summarise like the paper's tables.

Tasks run one at a time, each through its own `RLM` (its own trajectory file, no state shared
between tasks). The plain baseline sends `context + question` in one call to the root model,
as the paper's "base model" rows do; a provider error there (e.g. the context window) scores
0 and is recorded, like the paper's "*" entries.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlm.bench import DEFAULT_LENGTHS, benchmark_name, generate
from rlm.bench.oracle import OracleReader
from rlm.bench.oracle import backend_kwargs as oracle_backend_kwargs
from rlm.bench.tasks import TOKEN_APPROXIMATION, Task
from rlm.clients import get_client
from rlm.clients.base import BaseLM
from rlm.core.rlm import RLM
from rlm.core.types import RLMChatCompletion
from rlm.errors import CancellationError, ConfigurationError, RLMError

ORACLE = "oracle"
RESULTS_SCHEMA = "rlm-bench-results"
RESULTS_VERSION = 2  # 2: the config keeps the RLM arguments under "settings"
_SECRET_HINTS = ("key", "token", "secret", "password", "auth")


@dataclass
class BenchConfig:
    """What to run. `settings` are the `RLM(...)` arguments every task's run gets (build them
    with `rlm.commands.rlm_options.backend_settings`, or parse `rlm bench`'s options with
    `rlm_settings`); `backend="oracle"` needs no model and no network."""

    benchmarks: Sequence[str]
    settings: Mapping[str, Any] = field(default_factory=lambda: {"backend": ORACLE})
    lengths: Sequence[int] | None = None  # None: each benchmark's default (the paper's)
    n: int = 5
    rlm: bool = True
    plain: bool = False
    seed: int = 0
    start: int = 0
    log_dir: str | None = None

    def validate(self) -> None:
        if not self.benchmarks:
            raise ConfigurationError("no benchmark given")
        if self.n < 1 or self.start < 0:
            raise ConfigurationError(f"n must be >= 1 and start >= 0, got {self.n}, {self.start}")
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 1):
            raise ConfigurationError(f"lengths must be positive token counts, got {self.lengths}")
        if not (self.rlm or self.plain):
            raise ConfigurationError("nothing to run: enable the RLM, the plain baseline or both")
        backend = self.settings.get("backend", ORACLE)
        named_model = "model_name" in (self.settings.get("backend_kwargs") or {})
        if backend == ORACLE and (named_model or self.settings.get("other_backends")):
            raise ConfigurationError(
                "--backend oracle brings its own scripted root and sub-LM: "
                "drop --model / --sub-backend / --sub-model"
            )
        if backend != ORACLE and not named_model:
            raise ConfigurationError(f"--model is required for backend {backend!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config for a results file: client arguments with secret-looking values masked."""
        data = {k: v for k, v in asdict(self).items() if k != "settings"}
        data["benchmarks"] = list(self.benchmarks)
        data["lengths"] = None if self.lengths is None else list(self.lengths)
        settings = dict(self.settings)
        settings["backend_kwargs"] = _redacted(settings.get("backend_kwargs") or {})
        settings["other_backend_kwargs"] = [
            _redacted(kwargs) for kwargs in settings.get("other_backend_kwargs") or []
        ]
        data["settings"] = settings
        return data


def _redacted(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Backend kwargs fit for a results file: secret-looking values masked."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if any(hint in key.lower() for hint in _SECRET_HINTS):
            out[key] = "***"
        elif isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        else:
            try:
                json.dumps(value)
                out[key] = value
            except (TypeError, ValueError):
                out[key] = repr(value)
    return out


class Backends:
    """A benchmark's `RLM(...)` settings and plain-baseline client; the oracle's scripted
    clients put in for `backend="oracle"`. `prepare` per task."""

    def __init__(self, config: BenchConfig, benchmark: str) -> None:
        self.reader: OracleReader | None = None
        settings: dict[str, Any] = {"backend": ORACLE, **config.settings}
        if settings["backend"] == ORACLE:
            self.reader = OracleReader()
            root, sub, plain = oracle_backend_kwargs(
                benchmark, self.reader, dict(settings.get("backend_kwargs") or {})
            )
            settings.update(
                backend="scripted",
                backend_kwargs=root,
                other_backends=["scripted"],
                other_backend_kwargs=[sub],
            )
            self.plain: tuple[str, dict[str, Any]] = ("scripted", plain)
        else:
            self.plain = (settings["backend"], dict(settings.get("backend_kwargs") or {}))
        self.settings = settings

    def prepare(self, task: Task) -> None:
        if self.reader is not None:
            self.reader.task = task

    @property
    def root_model(self) -> str:
        return str((self.settings.get("backend_kwargs") or {}).get("model_name", ""))

    @property
    def sub_model(self) -> str | None:
        others = self.settings.get("other_backend_kwargs") or []
        return str(others[0].get("model_name", "")) if others else None


def count_subcalls(completion: RLMChatCompletion) -> int:
    """LM and child-RLM requests the root's code made (from the iteration records)."""
    total = 0
    for iteration in (completion.metadata or {}).get("iterations", []):
        for block in iteration.get("code_blocks", []):
            calls = block.get("result", {}).get("rlm_calls", [])
            total += sum(1 for c in calls if c.get("kind") in ("llm", "rlm"))
    return total


def _run_rlm(config: BenchConfig, backends: Backends, task: Task) -> dict[str, Any]:
    from rlm.logger import RLMLogger

    # Always a logger: completion.metadata (which count_subcalls reads) needs one; without a
    # log_dir it stays in memory.
    logger = RLMLogger(log_dir=config.log_dir, file_name=task.task_id, log_context=False)
    started = time.monotonic()
    try:
        rlm = RLM(
            **backends.settings,
            logger=logger,
            on_limit="return",  # a stopped run is scored on its partial answer
        )
        try:
            completion = rlm.completion(task.context, root_prompt=task.question)
        except (KeyboardInterrupt, CancellationError) as exc:
            # Ctrl-C (which the core raises as CancellationError) ends the bench, not one task.
            if logger is not None:  # the cut-off task's log says how it ended
                logger.close("cancelled", "interrupted (Ctrl-C)")
            raise KeyboardInterrupt from exc
        finally:
            rlm.close()
    except ConfigurationError:
        raise
    except RLMError as exc:
        return _failure(f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    summary = completion.usage_summary
    score = task.score(completion.response)
    return {
        "response": completion.response,
        "score": score,
        "exact": score == 1.0,
        "cost": summary.total_cost,
        "cost_is_partial": summary.cost_is_partial,  # some calls had no price: a lower bound
        "latency": completion.execution_time,
        "subcalls": count_subcalls(completion),
        "root_turns": completion.iterations,
        "input_tokens": summary.total_input_tokens,
        "output_tokens": summary.total_output_tokens,
        "stop_reason": completion.stop_reason,
        "error": completion.error,
        "run_id": completion.run_id,
        "log_file": None if logger is None else logger.log_file_path,
    }


def _run_plain(client: BaseLM, task: Task) -> dict[str, Any]:
    started = time.monotonic()
    try:
        response = client.respond(task.context + "\n\n" + task.question)
    except ConfigurationError:
        raise
    except RLMError as exc:
        return _failure(f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    score = task.score(response.text)
    return {
        "response": response.text,
        "score": score,
        "exact": score == 1.0,
        "cost": response.usage.cost,
        "latency": response.latency or time.monotonic() - started,
        "subcalls": None,
        "input_tokens": response.usage.input_tokens,
        "output_tokens": response.usage.output_tokens,
        "error": None,
    }


def _failure(message: str, latency: float) -> dict[str, Any]:
    return {
        "response": "",
        "score": 0.0,
        "exact": False,
        "cost": None,
        "latency": latency,
        "subcalls": None,
        "error": message,
    }


@dataclass
class BenchResults:
    config: BenchConfig
    tasks: list[dict[str, Any]] = field(default_factory=list)
    # False while tasks remain (a run cut off by Ctrl-C keeps the tasks that finished).
    complete: bool = False

    def all_failed(self) -> bool:
        """Every run of every task ended in an error: the scores measure nothing."""
        runs = [r[m] for r in self.tasks for m in ("rlm", "plain") if m in r]
        return bool(runs) and all(run.get("error") for run in runs)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (benchmark, length, method), in run order."""
        groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for record in self.tasks:
            for method in ("rlm", "plain"):
                if method in record:
                    key = (record["benchmark"], record["length"], method)
                    groups.setdefault(key, []).append(record[method])
        return [_row(b, length, m, results) for (b, length, m), results in groups.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULTS_SCHEMA,
            "version": RESULTS_VERSION,
            "token_approximation": TOKEN_APPROXIMATION,
            "config": self.config.to_dict(),
            "complete": self.complete,
            "summary": self.summary(),
            "tasks": self.tasks,
        }

    def write(self, path: str | Path) -> None:
        """Replace `path` whole (written beside it, then renamed): a Ctrl-C mid-write leaves
        the previous version, never half a file."""
        target = Path(path)
        if target.parent != Path():
            target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(partial, target)


def _row(benchmark: str, length: int, method: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [r["score"] for r in results]
    costs = [r["cost"] for r in results if r.get("cost") is not None]
    latencies = [r["latency"] for r in results]
    subcalls = [r["subcalls"] for r in results if r.get("subcalls") is not None]
    return {
        "benchmark": benchmark,
        "length": length,
        "method": method,
        "n": len(results),
        "score": statistics.fmean(scores),
        "exact": statistics.fmean(1.0 if r.get("exact") else 0.0 for r in results),
        "mean_cost": statistics.fmean(costs) if costs else None,
        "median_cost": statistics.median(costs) if costs else None,
        "priced": len(costs),
        # a task without a cost, or whose cost omits unpriced calls: the costs are not whole
        "cost_is_partial": len(costs) < len(results)
        or any(r.get("cost_is_partial") for r in results),
        "mean_latency": statistics.fmean(latencies),
        "median_latency": statistics.median(latencies),
        "subcalls_per_task": statistics.fmean(subcalls) if subcalls else None,
        "errors": sum(1 for r in results if r.get("error")),
    }


def run(
    config: BenchConfig,
    progress: Callable[[str], None] | None = None,
    *,
    results: BenchResults | None = None,
    on_task: Callable[[BenchResults], None] | None = None,
) -> BenchResults:
    """Generate and run every task of `config`; report each one to `progress` as it ends.

    Tasks go into `results` (a new one when None) as they finish and `on_task` sees it after
    each, so a caller that is interrupted still holds every finished, paid-for task.
    """
    config.validate()
    benchmarks = [benchmark_name(b) for b in config.benchmarks]
    if results is None:
        results = BenchResults(config)
    for benchmark in benchmarks:
        backends = Backends(config, benchmark)
        plain = get_client(*backends.plain) if config.plain else None
        try:
            for length in config.lengths or DEFAULT_LENGTHS[benchmark]:
                for index in range(config.start, config.start + config.n):
                    task = generate(benchmark, length, index, seed=config.seed)
                    backends.prepare(task)
                    record: dict[str, Any] = task.describe()
                    record["root_model"] = backends.root_model
                    record["sub_model"] = backends.sub_model
                    if config.rlm:
                        record["rlm"] = _run_rlm(config, backends, task)
                    if plain is not None:
                        record["plain"] = _run_plain(plain, task)
                    results.tasks.append(record)
                    if progress is not None:
                        progress(_progress_line(record))
                    if on_task is not None:
                        on_task(results)
        finally:
            if plain is not None:
                plain.close()
    results.complete = True
    return results


def _progress_line(record: dict[str, Any]) -> str:
    parts = [f"[{record['task_id']} {record['family']}]"]
    for method in ("rlm", "plain"):
        if method in record:
            r = record[method]
            extra = f", {r['subcalls']} sub-calls" if r.get("subcalls") is not None else ""
            error = f", error: {r['error'][:80]}" if r.get("error") else ""
            parts.append(f"{method} {r['score']:.3f} ({r['latency']:.1f}s{extra}{error})")
    return " ".join(parts)


# ----------------------------------------------------------------------- the table

COLUMNS = (
    "task",
    "length",
    "method",
    "n",
    "score %",
    "exact %",
    "mean cost",
    "median cost",
    "mean latency",
    "sub-calls/task",
)


def _money(value: float | None, partial: bool = False) -> str:
    """A cost; "*" marks one that leaves out calls or tasks without a price."""
    return "n/a" if value is None else f"${value:.4f}{'*' if partial else ''}"


def format_table(results: BenchResults) -> str:
    """The paper-style table: one row per task family, length and method."""
    rows = [
        (
            row["benchmark"],
            str(row["length"]),
            "RLM" if row["method"] == "rlm" else "plain",
            str(row["n"]),
            f"{100 * row['score']:.1f}",
            f"{100 * row['exact']:.1f}",
            _money(row["mean_cost"], row["cost_is_partial"]),
            _money(row["median_cost"], row["cost_is_partial"]),
            f"{row['mean_latency']:.2f}s",
            "-" if row["subcalls_per_task"] is None else f"{row['subcalls_per_task']:.1f}",
        )
        for row in results.summary()
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    out.append(f"length = nominal tokens; {TOKEN_APPROXIMATION}")
    if any(row["cost_is_partial"] for row in results.summary()):
        out.append("* partial cost: some calls had no price and are not counted (register_price)")
    return "\n".join(out)


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
