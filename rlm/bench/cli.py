"""`rlm bench TASK ...`: run S-NIAH / OOLONG / OOLONG-Pairs as an RLM (and as a plain LM).

    rlm bench sniah --backend oracle --n 2 --lengths 8192
    rlm bench oolong --backend openai --model gpt-5 --sub-model gpt-5-mini \\
        --n 50 --lengths 131072 --plain --out results.json --log-dir logs/
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from rlm.bench import BENCHMARKS
from rlm.commands import rlm_options

if TYPE_CHECKING:
    from rlm.bench.runner import BenchConfig

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [*BENCHMARKS, "all"]
    parser.add_argument(
        "task",
        metavar="TASK",
        help=f"benchmark to run: {', '.join(names)} ('oolong-pairs' works too)",
    )
    # The same model, environment and limit options as `rlm run` (one mapping to RLM(...)),
    # plus the older --backend-kwargs JSON spelling of --backend-arg.
    rlm_options.add_model_arguments(
        parser,
        backend_help="root client (openai, anthropic, gemini, litellm, ...); 'oracle' runs "
        "offline with scripted models that score 1.0",
        require_backend=True,
        json_spelling=True,
    )
    rlm_options.add_environment_arguments(parser, scope="each task")
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--n", type=int, default=5, help="tasks per length (paper: 50; 20 pairs)")
    bench.add_argument(
        "--lengths",
        type=parse_lengths,
        default=None,
        help="comma-separated token lengths, e.g. 8192,32K,2^17,1M "
        "(default: 8192 S-NIAH, 131072 OOLONG, 32768 OOLONG-Pairs)",
    )
    bench.add_argument(
        "--plain", action="store_true", help="also run the plain LM (whole context in one call)"
    )
    bench.add_argument("--no-rlm", action="store_true", help="run only the plain LM")
    bench.add_argument("--seed", type=int, default=0, help="task set seed")
    bench.add_argument("--start", type=int, default=0, help="first task index")
    bench.add_argument("--out", help="write the results JSON here")
    bench.add_argument("--log-dir", help="write one trajectory file per task here")
    bench.add_argument("--quiet", action="store_true", help="no per-task progress lines")


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The parsed options as a `BenchConfig`; the RLM part through `rlm_options`."""
    from rlm.bench import benchmark_name
    from rlm.bench.runner import BenchConfig

    settings = rlm_options.rlm_settings(args)
    if args.cache:
        settings["cache"] = args.cache
    return BenchConfig(
        benchmarks=list(BENCHMARKS) if args.task.lower() == "all" else [benchmark_name(args.task)],
        settings=settings,
        lengths=args.lengths,
        n=args.n,
        rlm=not args.no_rlm,
        plain=args.plain or args.no_rlm,
        seed=args.seed,
        start=args.start,
        log_dir=args.log_dir,
    )


def main(args: argparse.Namespace) -> int:
    from rlm.bench.runner import BenchResults, format_table, print_progress, run
    from rlm.errors import ConfigurationError

    results: BenchResults | None = None

    def save(done: BenchResults) -> None:
        if args.out:  # after every task: a Ctrl-C or a crash keeps what was paid for
            done.write(args.out)

    try:
        config = bench_config(args)
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
