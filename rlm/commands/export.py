"""`rlm export --format reference LOG.jsonl`: convert one of our logs to the reference's format.

    rlm export --format reference logs/rlm_....jsonl > rlm_reference.jsonl
    rlm export --format reference logs/rlm_....jsonl -o for_their_visualizer.jsonl

For teams that keep the reference implementation's visualizer: the output is its JSON-lines
format (a `metadata` line, then one line per root iteration; child runs nested in their
sub-call). `--format rlm` reads a reference log and writes ours. Exit status: 0 written,
2 unreadable or invalid log, or an output file that exists (use --force).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "exit status: 0 written; 2 bad log, or the output exists (without --force)"
    parser.add_argument(
        "log", metavar="LOG.jsonl", help="a trajectory file (ours or the reference's)"
    )
    parser.add_argument(
        "--format",
        choices=("reference", "rlm"),
        required=True,
        help="reference: the reference implementation's format; rlm: ours",
    )
    parser.add_argument("--output", "-o", help="write here instead of standard output")
    parser.add_argument("--force", action="store_true", help="overwrite the output file")


def main(args: argparse.Namespace) -> int:
    from rlm.errors import ConfigurationError
    from rlm.logger.records import encode
    from rlm.logger.reference_format import to_reference
    from rlm.logger.replay import read_log

    try:
        trajectory = read_log(args.log)
    except ConfigurationError as exc:
        print(f"rlm export: error: {exc}", file=sys.stderr)
        return 2
    records = trajectory.records if args.format == "rlm" else to_reference(trajectory.records)
    data = b"".join(encode(record) for record in records)
    if not args.output:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(Path(args.output), flags, 0o600)  # logs may hold the context
    except FileExistsError:
        print(f"rlm export: error: {args.output} exists (use --force)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rlm export: error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return 0
