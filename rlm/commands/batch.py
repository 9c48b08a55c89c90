"""`rlm batch`: run a file of tasks, one result line per task as it finishes.

    rlm batch tasks.jsonl --out results.jsonl --backend openai --model gpt-5-mini -j 8
    rlm batch tasks.jsonl --out results.jsonl --resume          # after a crash or Ctrl-C
    rlm batch tasks.jsonl --out results.jsonl --ray             # a Ray instance on this machine
    rlm batch tasks.jsonl --out results.jsonl --ray-address ray://head:10001

A task line: {"id", "context" | "context_file", "root_prompt", ...per-task overrides}; see
`rlm/batch/tasks.py`. A result line: {"id", "response", "value", "stop_reason", "usage",
"execution_time", "error", "attempts", "log_file"}.

Exit status:
    0    every task answered
    1    some task failed or stopped without an answer (its line says why), or the batch's
         budget ran out
    2    bad usage or configuration, or a bad task line with --on-bad-line stop (the default)
    130  interrupted: finished results are in --out; --resume continues
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any, TextIO

from rlm.commands import rlm_options
from rlm.errors import ConfigurationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EPILOG = """\
exit status:
  0    every task answered
  1    some task failed or stopped without an answer (its result line says why)
  2    bad usage or configuration, or a bad task line (with --on-bad-line stop)
  130  interrupted: finished results are in --out; --resume continues

API keys are read from environment variables only (e.g. OPENAI_API_KEY); on Ray, set them on
the workers too (docs/scale-out.md).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("tasks", help="JSON-lines file of tasks")
    parser.add_argument("--out", "-o", required=True, help="JSON-lines file of results")
    parser.add_argument("--resume", action="store_true", help="skip ids already in --out")
    parser.add_argument(
        "--concurrency", "-j", type=int, default=4, help="tasks at once (default 4)"
    )
    parser.add_argument(
        "--on-bad-line",
        choices=("stop", "skip"),
        default="stop",
        help="a bad task line stops the batch before it starts (default) or is reported and "
        "skipped",
    )
    parser.add_argument("--log-dir", help="one trajectory per task in this directory")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    rlm_options.add_model_arguments(parser)
    rlm_options.add_environment_arguments(parser, scope="the whole batch (one ledger)")
    limits = parser.add_argument_group("per-task limits")
    limits.add_argument("--task-max-budget", type=float, help="USD per task")
    limits.add_argument("--task-max-tokens", type=int, help="tokens per task")
    ray = parser.add_argument_group("ray")
    ray.add_argument("--ray", action="store_true", help="run the tasks in Ray actors")
    ray.add_argument("--ray-address", help="join this Ray cluster (implies --ray)")
    rlm_options.add_repeatable(
        ray,
        "--ray-env",
        "set this environment variable of yours (an API key) in every Ray worker; repeatable",
        metavar="NAME",
    )
    ray.add_argument(
        "--max-attempts", type=int, default=3, help="tries per task when its worker dies"
    )


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The batch's `RLMSpec`: `rlm run`'s settings, with --max-budget / --max-tokens moved to
    the batch's ledger and the --task-* limits bounding each task."""
    spec = rlm_options.rlm_settings(args)
    spec["max_budget"] = args.task_max_budget
    spec["max_tokens"] = args.task_max_tokens
    return spec


def main(args: argparse.Namespace) -> int:
    from rlm.batch import run_batch
    from rlm.batch.progress import Progress
    from rlm.batch.results import ResultFile
    from rlm.batch.tasks import read_tasks

    try:
        spec = spec_from_args(args)
        tasks, bad = read_tasks(args.tasks, on_bad_line=args.on_bad_line)
        for line in bad:
            print(f"rlm batch: skipped {args.tasks} {line}", file=sys.stderr)
        done: set[str] = set()
        if args.resume:
            with ResultFile(args.out, resume=True) as previous:
                done = set(previous.done)
        stream = run_batch(
            tasks,
            spec,
            executor="ray" if args.ray or args.ray_address else "local",
            concurrency=args.concurrency,
            out=args.out,
            resume=args.resume,
            log_dir=args.log_dir,
            max_budget=args.max_budget,
            max_tokens=args.max_tokens,
            ray_address=args.ray_address,
            ray_env=args.ray_env,
            max_attempts=args.max_attempts,
        )
    except ConfigurationError as exc:
        print(f"rlm batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    already = sum(task.id in done for task in tasks)
    stream_to: TextIO | None = io.StringIO() if args.quiet else None
    progress = Progress(len(tasks) - already, stream_to, skipped=already)
    failed = bool(bad)
    try:
        for result in stream:
            failed = failed or not result.ok
            progress.update(result)
    except KeyboardInterrupt:
        progress.show(final=True)
        print(
            f"rlm batch: interrupted; finished results are in {args.out} (--resume continues)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except ConfigurationError as exc:
        print(f"rlm batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress.show(final=True)
    print(f"rlm batch: results in {args.out}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
