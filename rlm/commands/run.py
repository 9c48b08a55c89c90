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
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlm.errors import ConfigurationError, RLMError
from rlm.logger.redact import Redactor, is_sensitive_key

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

API keys are read from environment variables only (e.g. OPENAI_API_KEY).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    model = parser.add_argument_group("models")
    model.add_argument("--backend", default="openai", help="root backend (default: openai)")
    model.add_argument("--model", help="root model name (the backend's model_name)")
    model.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra backend argument (VALUE parsed as JSON when it is JSON); repeatable",
    )
    model.add_argument("--sub-backend", help="backend for sub-calls (default: --backend)")
    model.add_argument("--sub-model", help="model for sub-calls (default: the root model)")
    model.add_argument(
        "--sub-backend-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra argument for the sub-call backend; repeatable",
    )
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
    env = parser.add_argument_group("environment and limits")
    env.add_argument("--environment", "-e", default="local", help="where code runs (local, ...)")
    env.add_argument(
        "--env-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment argument, e.g. timeout=30; repeatable",
    )
    env.add_argument("--max-depth", type=int, default=1)
    env.add_argument("--max-iterations", type=int, default=30)
    env.add_argument("--max-budget", type=float, help="USD over the whole recursion tree")
    env.add_argument(
        "--allow-unpriced-models",
        action="store_true",
        help="with --max-budget, count calls to models without a price as $0 instead of "
        'refusing (or price it: --backend-arg prices=\'{"input": 1.25, "output": 10}\')',
    )
    env.add_argument("--max-timeout", type=float, help="seconds of wall time")
    env.add_argument("--max-tokens", type=int)
    env.add_argument("--max-subcalls", type=int)
    env.add_argument("--max-errors", type=int, help="consecutive failing turns before stopping")
    out = parser.add_argument_group("output")
    out.add_argument("--log-dir", help="write the trajectory as JSON lines into this directory")
    out.add_argument(
        "--log-format",
        choices=("rlm", "reference"),
        default="rlm",
        help="rlm (default) or reference: the reference implementation's format, for its "
        "visualizer (`rlm replay` and `rlm view` read both)",
    )
    out.add_argument(
        "--no-log-context",
        action="store_true",
        help="leave the context out of the log (smaller; `rlm replay --rerun` then cannot run)",
    )
    out.add_argument("--verbose", "-v", action="store_true", help="show the run on stderr (rich)")


def main(args: argparse.Namespace) -> int:
    redactor = Redactor()
    try:
        context = _read_context(args)
        rlm = _build(args)
    except ConfigurationError as exc:
        return _fail(redactor, exc, EXIT_USAGE)
    try:
        with rlm:
            completion = rlm.completion(context, root_prompt=args.root_prompt)
    except KeyboardInterrupt:
        print("rlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigurationError as exc:
        return _fail(redactor, exc, EXIT_USAGE)
    except RLMError as exc:
        return _fail(redactor, exc, EXIT_STOPPED)
    print(redactor.text(completion.response))
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


def _fail(redactor: Redactor, exc: BaseException, code: int) -> int:
    print(redactor.text(f"rlm: error: {exc}"), file=sys.stderr)
    return code


def _pairs(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE arguments as a dict; values that parse as JSON are JSON, others strings."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigurationError(f"{flag} expects KEY=VALUE, got {item!r}")
        if is_sensitive_key(key):
            raise ConfigurationError(
                f"{flag} {key}=...: secrets are not accepted on the command line (other users "
                "can read it); set the provider's environment variable instead, e.g. "
                "OPENAI_API_KEY"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if Redactor(include_env=False).data(value) != value:  # a nested header, a sk-... value
            raise ConfigurationError(
                f"{flag} {key}=...: the value holds a secret; secrets are not accepted on the "
                "command line, set the provider's environment variable instead"
            )
        result[key] = value
    return result


def _build(args: argparse.Namespace) -> Any:
    from rlm.core.rlm import RLM
    from rlm.logger.jsonl import RLMLogger

    backend_kwargs = _pairs(args.backend_arg, "--backend-arg")
    if args.model:
        backend_kwargs["model_name"] = args.model
    other_backends: list[str] = []
    other_kwargs: list[dict[str, Any]] = []
    if args.sub_backend or args.sub_model or args.sub_backend_arg:
        sub_kwargs = _pairs(args.sub_backend_arg, "--sub-backend-arg")
        if not args.sub_backend:  # same backend: start from the root's arguments
            sub_kwargs = {**backend_kwargs, **sub_kwargs}
        if args.sub_model:
            sub_kwargs["model_name"] = args.sub_model
        other_backends.append(args.sub_backend or args.backend)
        other_kwargs.append(sub_kwargs)
    observers = []
    if args.verbose:
        from rlm._optional import require
        from rlm.logger.verbose import VerbosePrinter

        require("rich", extra="rich")
        from rich.console import Console

        observers.append(VerbosePrinter(Console(stderr=True, highlight=False)))
    logger = None
    if args.log_dir:
        logger = RLMLogger(
            args.log_dir, log_context=not args.no_log_context, log_format=args.log_format
        )
    return RLM(
        backend=args.backend,
        backend_kwargs=backend_kwargs,
        environment=args.environment,
        environment_kwargs=_pairs(args.env_arg, "--env-arg"),
        max_depth=args.max_depth,
        max_iterations=args.max_iterations,
        max_budget=args.max_budget,
        allow_unpriced_models=args.allow_unpriced_models,
        max_timeout=args.max_timeout,
        max_tokens=args.max_tokens,
        max_errors=args.max_errors,
        max_subcalls=args.max_subcalls,
        other_backends=other_backends,
        other_backend_kwargs=other_kwargs,
        logger=logger,
        observers=observers,
    )


def _read_context(args: argparse.Namespace) -> Any:
    source = args.context
    if source is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigurationError("no context: give --context FILE or pipe it on stdin")
        source = "-"
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the context from {source}: {exc}") from exc
    if not args.json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--json: the context is not valid JSON ({exc})") from exc
