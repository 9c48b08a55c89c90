"""`rlm bench TASK ...`: run S-NIAH / OOLONG / OOLONG-Pairs as an RLM (and as a plain LM).

    rlm bench sniah --backend oracle --n 2 --lengths 8192
    rlm bench oolong --backend openai --model gpt-5 --sub-model gpt-5-mini \\
        --n 50 --lengths 131072 --plain --out results.json --log-dir logs/
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from rlm.bench import BENCHMARKS

_LENGTH_RE = re.compile(r"^(\d+)([kKmM]?)$")
_POWER_RE = re.compile(r"^2\^(\d+)$")


def parse_length(text: str) -> int:
    """A token count: 8192, 8K / 8k (x1024), 1M (x1024^2) or 2^13."""
    text = text.strip()
    power = _POWER_RE.match(text)
    if power:
        return int(2 ** int(power.group(1)))
    match = _LENGTH_RE.match(text)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"not a length in tokens: {text!r}")
    scale = {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()]
    return int(match.group(1)) * scale


def parse_lengths(text: str) -> list[int]:
    return [parse_length(part) for part in text.split(",") if part.strip()]


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [*BENCHMARKS, "all"]
    parser.add_argument(
        "task",
        metavar="TASK",
        help=f"benchmark to run: {', '.join(names)} ('oolong-pairs' works too)",
    )
    parser.add_argument(
        "--backend",
        required=True,
        help="root client (openai, anthropic, gemini, litellm, ...); 'oracle' runs offline "
        "with scripted models that score 1.0",
    )
    parser.add_argument("--model", help="root model name (required unless --backend oracle)")
    parser.add_argument(
        "--backend-kwargs",
        type=parse_json_object,
        default={},
        metavar="JSON",
        help='extra client arguments, e.g. \'{"base_url": "http://localhost:8000/v1"}\'',
    )
    parser.add_argument("--sub-backend", help="client for sub-calls (default: the root's)")
    parser.add_argument("--sub-model", help="model for sub-calls (default: the root model)")
    parser.add_argument("--sub-backend-kwargs", type=parse_json_object, default={}, metavar="JSON")
    parser.add_argument("--n", type=int, default=5, help="tasks per length (paper: 50; 20 pairs)")
    parser.add_argument(
        "--lengths",
        type=parse_lengths,
        default=None,
        help="comma-separated token lengths, e.g. 8192,32K,2^17,1M "
        "(default: 8192 S-NIAH, 131072 OOLONG, 32768 OOLONG-Pairs)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="also run the plain LM (whole context in one call)"
    )
    parser.add_argument("--no-rlm", action="store_true", help="run only the plain LM")
    parser.add_argument("--environment", default="local", help="REPL environment (local, ...)")
    parser.add_argument("--max-iterations", type=int, default=30)
    parser.add_argument("--max-depth", type=int, default=1, help="2+ lets rlm_query recurse")
    parser.add_argument("--max-budget", type=float, help="USD limit per task")
    parser.add_argument(
        "--allow-unpriced-models",
        action="store_true",
        help="with --max-budget, count calls to models without a price as $0 instead of refusing",
    )
    parser.add_argument("--max-timeout", type=float, help="seconds limit per task")
    parser.add_argument("--seed", type=int, default=0, help="task set seed")
    parser.add_argument("--start", type=int, default=0, help="first task index")
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("--log-dir", help="write one trajectory file per task here")
    parser.add_argument("--quiet", action="store_true", help="no per-task progress lines")


def main(args: argparse.Namespace) -> int:
    from rlm.bench import benchmark_name
    from rlm.bench.runner import BenchConfig, BenchResults, format_table, print_progress, run
    from rlm.errors import ConfigurationError

    results: BenchResults | None = None

    def save(done: BenchResults) -> None:
        if args.out:  # after every task: a Ctrl-C or a crash keeps what was paid for
            done.write(args.out)

    try:
        benchmarks = list(BENCHMARKS) if args.task.lower() == "all" else [benchmark_name(args.task)]
        config = BenchConfig(
            benchmarks=benchmarks,
            lengths=args.lengths,
            n=args.n,
            backend=args.backend,
            model=args.model,
            backend_kwargs=args.backend_kwargs,
            sub_backend=args.sub_backend,
            sub_model=args.sub_model,
            sub_backend_kwargs=args.sub_backend_kwargs,
            rlm=not args.no_rlm,
            plain=args.plain or args.no_rlm,
            environment=args.environment,
            max_iterations=args.max_iterations,
            max_depth=args.max_depth,
            max_budget=args.max_budget,
            allow_unpriced_models=args.allow_unpriced_models,
            max_timeout=args.max_timeout,
            seed=args.seed,
            start=args.start,
            log_dir=args.log_dir,
        )
        results = BenchResults(config)
        run(
            config,
            progress=None if args.quiet else print_progress,
            results=results,
            on_task=save,
        )
    except ConfigurationError as exc:
        print(f"rlm bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if results is None or not results.tasks:
            print("rlm bench: interrupted before any task finished", file=sys.stderr)
            return 130
        print(format_table(results))
        save(results)
        where = f"; results so far: {args.out}" if args.out else ""
        print(
            f"rlm bench: interrupted after {len(results.tasks)} finished tasks{where}",
            file=sys.stderr,
        )
        return 130
    print(format_table(results))
    if args.out:
        results.write(args.out)
        print(f"results: {args.out}")
    if args.log_dir:
        print(f"trajectories: {args.log_dir}")
    if results.all_failed():
        first = next(r[m]["error"] for r in results.tasks for m in ("rlm", "plain") if m in r)
        print(
            f"rlm bench: every task failed, the scores measure nothing (first error: {first})",
            file=sys.stderr,
        )
        return 1
    return 0
