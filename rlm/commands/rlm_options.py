"""The model, environment and limit options shared by the commands that build an `RLM`
(`rlm run`, `rlm serve`, `rlm mcp`, `rlm batch`), and their mapping to `RLM(...)` arguments.

One definition, so every command spells a flag the same way and builds the same RLM from it.
API keys are read from the environment only: there is no flag for them, since command lines are
visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rlm.errors import ConfigurationError
from rlm.logger.redact import Redactor, is_sensitive_key


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
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


def add_environment_arguments(
    parser: argparse.ArgumentParser, scope: str = "the whole recursion tree"
) -> None:
    """`scope` says what --max-budget and --max-tokens bound (a batch: the whole batch)."""
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
    env.add_argument("--max-budget", type=float, help=f"USD over {scope}")
    env.add_argument(
        "--allow-unpriced-models",
        action="store_true",
        help="with --max-budget, count calls to models without a price as $0 instead of "
        'refusing (or price it: --backend-arg prices=\'{"input": 1.25, "output": 10}\')',
    )
    env.add_argument("--max-timeout", type=float, help="seconds of wall time")
    env.add_argument("--max-tokens", type=int, help=f"tokens over {scope}")
    env.add_argument("--max-subcalls", type=int)
    env.add_argument("--max-errors", type=int, help="consecutive failing turns before stopping")
    env.add_argument(
        "--cache",
        metavar="PATH",
        help="reuse answers of identical sub-calls from this SQLite file (created if missing)",
    )


def add_log_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--log-dir, --log-format and --no-log-context, in an "output" group the caller may add
    to."""
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
        help="leave the context out of the log (`rlm replay --rerun` then cannot run)",
    )
    out.add_argument(
        "--log-context",
        choices=("file", "inline", "none"),
        default="file",
        help="where the log keeps the context for `rlm replay --rerun`: a file beside the log "
        "(default, cheap), inside the log (one file, slow for big contexts) or nowhere",
    )
    return out


def pairs(items: list[str], flag: str) -> dict[str, Any]:
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


def rlm_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `RLM(...)` arguments the parsed options describe that are plain data (no observers,
    no logger): what a Ray worker on another machine needs to build the same `RLM`."""
    backend_kwargs = pairs(args.backend_arg, "--backend-arg")
    if args.model:
        backend_kwargs["model_name"] = args.model
    other_backends: list[str] = []
    other_kwargs: list[dict[str, Any]] = []
    if args.sub_backend or args.sub_model or args.sub_backend_arg:
        sub_kwargs = pairs(args.sub_backend_arg, "--sub-backend-arg")
        if not args.sub_backend:  # same backend: start from the root's arguments
            sub_kwargs = {**backend_kwargs, **sub_kwargs}
        if args.sub_model:
            sub_kwargs["model_name"] = args.sub_model
        other_backends.append(args.sub_backend or args.backend)
        other_kwargs.append(sub_kwargs)
    return {
        "backend": args.backend,
        "backend_kwargs": backend_kwargs,
        "environment": args.environment,
        "environment_kwargs": pairs(args.env_arg, "--env-arg"),
        "max_depth": args.max_depth,
        "max_iterations": args.max_iterations,
        "max_budget": args.max_budget,
        "max_timeout": args.max_timeout,
        "max_tokens": args.max_tokens,
        "max_errors": args.max_errors,
        "max_subcalls": args.max_subcalls,
        "allow_unpriced_models": args.allow_unpriced_models,
        "other_backends": other_backends,
        "other_backend_kwargs": other_kwargs,
    }


def build_rlm(args: argparse.Namespace, *, observers: list[Any] | None = None) -> Any:
    """The `RLM` the parsed options describe. `args.verbose` (when the command has it) adds the
    rich console on stderr; `args.log_dir` adds a JSON-lines logger (one file per run)."""
    from rlm.core.rlm import RLM
    from rlm.logger.jsonl import RLMLogger

    settings = rlm_settings(args)
    observer_list = list(observers or [])
    if getattr(args, "verbose", False):
        from rlm._optional import require
        from rlm.logger.verbose import VerbosePrinter

        require("rich", extra="rich")
        from rich.console import Console

        from rlm.commands import output

        # A broken stderr silences the console; when stdout is that same pipe the run stops.
        console = Console(stderr=True, highlight=False)
        observer_list.append(VerbosePrinter(console, on_closed=output.stderr_closed))
    logger = None
    if args.log_dir:
        mode = "none" if args.no_log_context else getattr(args, "log_context", "file")
        logger = RLMLogger(args.log_dir, log_context=mode, log_format=args.log_format)
    # The commands report a stopped run's partial answer with its stop reason, not a traceback.
    return RLM(
        **settings,
        logger=logger,
        observers=observer_list,
        on_limit="return",
        cache=getattr(args, "cache", None),
    )
