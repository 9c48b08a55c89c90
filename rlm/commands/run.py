"""`rlm run`: one completion from the command line; prints the answer on stdout.

    rlm run --backend openai --model gpt-5-mini --context report.txt -p "Which clauses conflict?"
    cat data.json | rlm run --json --sub-model gpt-5-nano --log-dir logs --verbose

The context comes from `--context FILE` (`-` = stdin) or, when omitted, from piped stdin.
API keys are read from the environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...): there is
no flag for them, since command lines are visible to every user of the machine.

Exit status:
    0  answered: the run ended with a final answer (printed on stdout)
    1  the run ended without one (a limit, an error or cancellation); the best answer so far is
       printed anyway and the stop reason goes to stderr
    2  bad usage or configuration (unknown backend or environment, missing key or extra,
       unreadable context file, bad argument)
    130 interrupted (Ctrl-C); the log gets its `run_end` (stop reason "cancelled")
    141 stdout was closed (`| head`): the run is cancelled, quietly
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlm.batch.tasks import parse_document, read_document
from rlm.commands import output
from rlm.commands.rlm_options import (
    add_environment_arguments,
    add_log_arguments,
    add_model_arguments,
    build_rlm,
)
from rlm.errors import CancellationError, ConfigurationError, RLMError
from rlm.logger.redact import Redactor

EXIT_ANSWERED = 0
EXIT_STOPPED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
exit status:
  0    answered (the run ended with a final answer)
  1    the run stopped without one (limit, error, cancellation): the best answer so far is
       printed anyway and the stop reason goes to stderr
  2    bad usage or configuration
  130  interrupted
  141  stdout was closed by its reader (e.g. `| head`)

API keys are read from environment variables only (e.g. OPENAI_API_KEY).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_model_arguments(parser)
    task = parser.add_argument_group("task")
    task.add_argument(
        "--context", "-c", metavar="FILE", help="file holding the context ('-' = stdin)"
    )
    task.add_argument(
        "--json", action="store_true", help="parse the context as JSON (a list, a dict, ...)"
    )
    task.add_argument(
        "--root-prompt",
        "--prompt",
        "-p",
        dest="root_prompt",
        help="the question shown to the root model",
    )
    add_environment_arguments(parser)
    out = add_log_arguments(parser)
    out.add_argument("--verbose", "-v", action="store_true", help="show the run on stderr (rich)")


def main(args: argparse.Namespace) -> int:
    redactor = Redactor()
    try:
        context = _read_context(args)
        rlm = build_rlm(args)
        logger = _logger_of(rlm)
    except ConfigurationError as exc:
        return _fail(redactor, exc, EXIT_USAGE)
    try:
        with rlm:
            completion = rlm.completion(context, root_prompt=args.root_prompt)
    except (KeyboardInterrupt, CancellationError) as exc:
        if output.is_closed():
            return output.EXIT_BROKEN_PIPE
        _end_logs(logger, "interrupted (Ctrl-C)")
        partial = getattr(exc, "partial_answer", None)
        if partial:
            print(redactor.known(partial))
        print("rlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigurationError as exc:
        return _fail(redactor, exc, EXIT_USAGE)
    except RLMError as exc:
        _end_logs(logger, str(exc))
        return _fail(redactor, exc, EXIT_STOPPED)
    # The answer is the user's: only the exact values of known keys are taken out of it.
    print(redactor.known(completion.response), flush=True)
    log_file = (completion.metadata or {}).get("log_file")
    if log_file:
        print(f"rlm: trajectory written to {log_file}", file=sys.stderr)
    if completion.stop_reason == "final_answer":
        return EXIT_ANSWERED
    reason = f"rlm: stopped: {completion.stop_reason}"
    if completion.error:
        reason += f" ({completion.error})"
    print(redactor.text(reason), file=sys.stderr)
    return EXIT_STOPPED


def _logger_of(rlm: Any) -> Any:
    from rlm.logger.jsonl import RLMLogger

    return next((o for o in rlm.observers if isinstance(o, RLMLogger)), None)


def _end_logs(logger: Any, error: str) -> None:
    """A run cut off before its end: its log gets a `run_end` ("cancelled") and its path is
    printed, so the viewer and `rlm replay` show how it ended."""
    if logger is None:
        return
    # The core may have ended the run's log itself on the way out; then its file is the last.
    files = logger.open_files or ([logger.log_file_path] if logger.log_file_path else [])
    logger.close("cancelled", error)
    for path in files:
        print(f"rlm: trajectory written to {path}", file=sys.stderr)


def _fail(redactor: Redactor, exc: BaseException, code: int) -> int:
    print(redactor.text(f"rlm: error: {exc}"), file=sys.stderr)
    return code


def _read_context(args: argparse.Namespace) -> Any:
    source = args.context
    if source is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigurationError("no context: give --context FILE or pipe it on stdin")
        source = "-"
    where = "stdin" if source == "-" else source
    if source == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the context from stdin: {exc}") from exc
    else:
        text = read_document(source, as_json=False, what=f"the context from {where}")
    if not text.strip():
        raise ConfigurationError(
            f"the context from {where} is empty: give --context FILE or pipe the document in"
        )
    return parse_document(text, as_json=args.json, what=f"--json: the context from {where}")
