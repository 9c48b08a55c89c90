"""`rlm serve`: an OpenAI-compatible endpoint in front of an RLM.

    rlm serve --backend openai --model gpt-5-mini --sub-model gpt-5-nano --port 8000
    # then, with any OpenAI client:
    #   base_url=http://127.0.0.1:8000/v1, api_key=<the key printed at start>, model="rlm"

Takes `rlm run`'s model, environment and limit options; the limits are the most a request may
ask for. The API key comes from --api-key or RLM_SERVE_API_KEY; without either a random one is
generated and printed. See docs/serving.md.

Exit status: 0 after Ctrl+C or SIGTERM; 2 bad usage, configuration, or a port in use.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import sys
import time
from typing import TYPE_CHECKING

from rlm.commands.rlm_options import KEYS_NOTE, add_log_arguments, add_rlm_arguments, build_rlm
from rlm.errors import ConfigurationError

if TYPE_CHECKING:
    from rlm.serve.app import ServeConfig

API_KEY_ENV = "RLM_SERVE_API_KEY"
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_rlm_arguments(
        parser,
        "exit status: 0 stopped (Ctrl+C, SIGTERM); 2 bad usage, configuration or port in use\n\n"
        + KEYS_NOTE,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free)")
    server.add_argument(
        "--api-key",
        help=f"the key clients must send (default: ${API_KEY_ENV}, else a random key printed at "
        "start); prefer the variable, command lines are visible to other users",
    )
    server.add_argument(
        "--model-id", default="rlm", help="the model name clients ask for (default: rlm)"
    )
    server.add_argument(
        "--split",
        choices=["last_user", "all_context"],
        default="last_user",
        help="how messages become the RLM's input: last_user (default: the last user message "
        "is the question, the messages before it the context) or all_context (every message is "
        "context, no question); a request may choose with rlm.split",
    )
    server.add_argument(
        "--max-body-mb", type=float, default=32.0, help="largest request body (default: 32 MB)"
    )
    server.add_argument(
        "--max-context-chars",
        type=int,
        help="largest total message content in characters (default: no limit but the body's)",
    )
    server.add_argument(
        "--max-runs", type=int, default=32, help="runs at once; more requests wait (default: 32)"
    )
    add_log_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from rlm.aio import run_sync

    try:
        from rlm.serve.app import ChatServer  # needs the serve extra

        config = _config(args)
        rlm = build_rlm(args)
    except ConfigurationError as exc:
        print(f"rlm serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server = ChatServer(rlm, config)
    try:
        try:
            host, port = run_sync(server.start(args.host, args.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                print(f"rlm serve: error: port {args.port} is in use", file=sys.stderr)
                return EXIT_USAGE
            raise
        shown = f"[{host}]" if ":" in host else host
        print(f"rlm serve: listening on http://{shown}:{port}/v1 (model {config.model_id!r})")
        if not (args.api_key or os.environ.get(API_KEY_ENV)):
            print(f"rlm serve: API key: {config.api_key}")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("rlm serve: stopping", file=sys.stderr)
            run_sync(server.stop(), timeout=60)
            return 0
    finally:
        rlm.close()


def _config(args: argparse.Namespace) -> ServeConfig:
    from rlm.serve.app import ServeConfig

    key = args.api_key or os.environ.get(API_KEY_ENV) or secrets.token_urlsafe(24)
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be 0..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise ConfigurationError("--max-body-mb must be > 0")
    if args.max_context_chars is not None and args.max_context_chars < 1:
        raise ConfigurationError("--max-context-chars must be >= 1")
    if args.max_runs < 1:
        raise ConfigurationError("--max-runs must be >= 1")
    return ServeConfig(
        api_key=key,
        model_id=args.model_id,
        split=args.split,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_context_chars=args.max_context_chars,
        max_runs=args.max_runs,
    )
