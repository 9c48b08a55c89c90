"""`rlm replay LOG.jsonl`: show a recorded run; `--rerun` re-executes it and compares.

    rlm replay logs/rlm_2026-01-01_12-00-00_ab12cd34ef56ab78.jsonl
    rlm replay --rerun logs/rlm_....jsonl            # no provider or key needed

`--rerun` runs the recorded context in a fresh environment of the recorded type (or
`--environment`), answering every LM call with the recorded reply, and prints each cell whose
stdout, stderr or error differs from the recording.

Exit status:
    0  rendered; with --rerun: every recorded cell reproduced
    1  --rerun: at least one cell differs (or is missing or extra)
    2  bad usage, an unreadable or invalid log, or a log without its context (--rerun)
"""

from __future__ import annotations

import argparse
import sys

from rlm.errors import ConfigurationError, RLMError

EPILOG = """\
exit status:
  0  rendered; with --rerun: every recorded cell reproduced
  1  --rerun: at least one cell differs, is missing or is extra
  2  bad usage, unreadable or invalid log, or (--rerun) a log without its context
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("log", metavar="LOG.jsonl", help="a trajectory file written by RLMLogger")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="re-execute the recorded code with the recorded LM replies and compare the cells",
    )
    parser.add_argument(
        "--environment", "-e", help="--rerun in this environment instead of the recorded one"
    )
    parser.add_argument(
        "--max-chars", type=int, default=2_000, help="characters shown per response or output"
    )


def main(args: argparse.Namespace) -> int:
    from rlm.logger.replay import read_log, render, rerun

    try:
        trajectory = read_log(args.log)
        if not args.rerun:
            render(trajectory, max_chars=args.max_chars)
            return 0
        report = rerun(trajectory, environment=args.environment)
    except ConfigurationError as exc:
        print(f"rlm replay: error: {exc}", file=sys.stderr)
        return 2
    except RLMError as exc:
        print(f"rlm replay: the rerun failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    return 0 if report.reproduced else 1
