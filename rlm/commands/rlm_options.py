"""The model, environment and limit options shared by the commands that build an `RLM`
(`rlm run`, `rlm serve`, `rlm mcp`, `rlm batch`), and their mapping to `RLM(...)` arguments.

One definition, so every command spells a flag the same way and builds the same RLM from it.
API keys are read from the environment only: there is no flag for them, since command lines are
visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from rlm.errors import ConfigurationError
from rlm.logger.redact import Redactor, is_sensitive_key

KEYS_NOTE = "Provider API keys are read from environment variables only (e.g. OPENAI_API_KEY)."


def add_repeatable(group: Any, flag: str, help_text: str, metavar: str = "KEY=VALUE") -> None:
    """A flag that may be given many times, collected in a list."""
    group.add_argument(flag, action="append", default=[], metavar=metavar, help=help_text)


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object (the older `--backend-kwargs JSON` spelling)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_rlm_arguments(
    parser: argparse.ArgumentParser, epilog: str, scope: str = "the whole recursion tree"
) -> None:
    """The model, environment and limit options of a command that builds an `RLM`, with its
    epilog (exit statuses, where keys come from) kept as written."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = epilog
    add_model_arguments(parser)
    add_environment_arguments(parser, scope)


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    backend_help: str = "root backend (default: openai)",
    require_backend: bool = False,
    json_spelling: bool = False,
) -> None:
    """`json_spelling` also accepts `rlm bench`'s older `--backend-kwargs JSON` and
    `--sub-backend-kwargs JSON`; `--backend-arg KEY=VALUE` wins where both name a key."""
    model = parser.add_argument_group("models")
    if require_backend:
        model.add_argument("--backend", required=True, help=backend_help)
    else:
        model.add_argument("--backend", default="openai", help=backend_help)
    model.add_argument("--model", help="root model name (the backend's model_name)")
    add_repeatable(
        model,
        "--backend-arg",
        "extra backend argument (VALUE parsed as JSON when it is JSON); repeatable",
    )
    model.add_argument("--sub-backend", help="backend for sub-calls (default: --backend)")
    model.add_argument("--sub-model", help="model for sub-calls (default: the root model)")
    add_repeatable(
        model, "--sub-backend-arg", "extra argument for the sub-call backend; repeatable"
    )
    if json_spelling:
        for flag, instead in (
            ("--backend-kwargs", "--backend-arg"),
            ("--sub-backend-kwargs", "--sub-backend-arg"),
        ):
            model.add_argument(
                flag,
                type=json_object,
                default={},
                metavar="JSON",
                help=f"the older spelling of {instead}: all arguments as one JSON object",
            )


def add_environment_arguments(
    parser: argparse.ArgumentParser, scope: str = "the whole recursion tree"
) -> None:
    """`scope` says what --max-budget and --max-tokens bound (a batch: the whole batch)."""
    env = parser.add_argument_group("environment and limits")
    env.add_argument("--environment", "-e", default="local", help="where code runs (local, ...)")
    add_repeatable(env, "--env-arg", "environment argument, e.g. timeout=30; repeatable")
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
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return without_secrets(result, flag)


def without_secrets(arguments: dict[str, Any], flag: str) -> dict[str, Any]:
    """`arguments` when none of them is a secret: command lines are visible to every user of
    the machine, so keys come from the provider's environment variable instead."""
    for key, value in arguments.items():
        if is_sensitive_key(key):
            raise ConfigurationError(
                f"{flag} {key}=...: secrets are not accepted on the command line (other users "
                "can read it); set the provider's environment variable instead, e.g. "
                "OPENAI_API_KEY"
            )
        if Redactor(include_env=False).data(value) != value:  # a nested header, a sk-... value
            raise ConfigurationError(
                f"{flag} {key}=...: the value holds a secret; secrets are not accepted on the "
                "command line, set the provider's environment variable instead"
            )
    return arguments


def backend_settings(
    backend: str,
    backend_kwargs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    sub_backend: str | None = None,
    sub_model: str | None = None,
    sub_backend_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The client part of the `RLM(...)` arguments: the root's backend and, when any sub-call
    option is given, one other backend for sub-calls. A sub-call client on the root's backend
    starts from the root's arguments (base_url, ...) but drops the root model's `prices` when
    it names another model."""
    root = dict(backend_kwargs or {})
    if model:
        root["model_name"] = model
    settings: dict[str, Any] = {
        "backend": backend,
        "backend_kwargs": root,
        "other_backends": [],
        "other_backend_kwargs": [],
    }
    if sub_backend or sub_model or sub_backend_kwargs:
        name = sub_backend or backend
        base = dict(root) if name == backend else {}
        if sub_model and sub_model != base.get("model_name"):
            base.pop("prices", None)
        sub = {**base, **(sub_backend_kwargs or {})}
        if sub_model:
            sub["model_name"] = sub_model
        settings["other_backends"].append(name)
        settings["other_backend_kwargs"].append(sub)
    return settings


def rlm_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `RLM(...)` arguments the parsed options describe that are plain data (no observers,
    no logger): what a Ray worker on another machine needs to build the same `RLM`."""
    return {
        **backend_settings(
            args.backend,
            _client_arguments(args, "backend"),
            model=args.model,
            sub_backend=args.sub_backend,
            sub_model=args.sub_model,
            sub_backend_kwargs=_client_arguments(args, "sub_backend"),
        ),
        "environment": args.environment,
        "environment_kwargs": pairs(args.env_arg, "--env-arg"),
        **{key: getattr(args, key) for key in LIMIT_OPTIONS},
    }


def _client_arguments(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """`--{which}-arg KEY=VALUE` over the older `--{which}-kwargs JSON` (when the command
    takes it)."""
    flag = "--" + which.replace("_", "-")
    older = without_secrets(dict(getattr(args, f"{which}_kwargs", None) or {}), f"{flag}-kwargs")
    return {**older, **pairs(getattr(args, f"{which}_arg"), f"{flag}-arg")}


# The limit options, named as `RLM(...)` names them.
LIMIT_OPTIONS = (
    "max_depth",
    "max_iterations",
    "max_budget",
    "max_timeout",
    "max_tokens",
    "max_errors",
    "max_subcalls",
    "allow_unpriced_models",
)

# Every `RLM(...)` argument a settings dict may hold: the plain-data ones (no observers,
# callables or loggers: those are made where the run happens). `rlm_settings` yields these
# but the last two; a batch spec (rlm/batch/runner.py) may hold any of them.
PLAIN_SETTINGS = frozenset(
    {
        "backend",
        "backend_kwargs",
        "other_backends",
        "other_backend_kwargs",
        "environment",
        "environment_kwargs",
        *LIMIT_OPTIONS,
        "cache",
        "custom_system_prompt",
    }
)


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
