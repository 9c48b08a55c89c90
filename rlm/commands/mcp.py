"""`rlm mcp`: an MCP server over stdio whose `rlm_completion` tool runs an RLM.

    rlm mcp --backend openai --model gpt-5-mini --sub-model gpt-5-nano --allow-dir ~/docs

An MCP client starts it as a subprocess (see docs/serving.md for Claude Desktop and Cursor
configurations). Takes `rlm run`'s model, environment and limit options; every call runs within
them. Logs and errors go to stderr: stdout is the protocol.

Exit status: 0 when the client closes the connection; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlm.commands.rlm_options import (
    KEYS_NOTE,
    add_log_arguments,
    add_repeatable,
    add_rlm_arguments,
    build_rlm,
)
from rlm.errors import ConfigurationError

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_rlm_arguments(
        parser,
        "exit status: 0 the client disconnected; 2 bad usage or configuration\n\n" + KEYS_NOTE,
    )
    tool = parser.add_argument_group("tool")
    add_repeatable(
        tool,
        "--allow-dir",
        "a directory whose files context_path may name; repeatable (default: the working "
        "directory)",
        metavar="DIR",
    )
    tool.add_argument(
        "--max-context-chars", type=int, help="largest context in characters (default: no limit)"
    )
    add_log_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        from rlm.serve.mcp_server import ContextSource, build_mcp_server

        if args.max_context_chars is not None and args.max_context_chars < 1:
            raise ConfigurationError("--max-context-chars must be >= 1")
        dirs = [Path(d) for d in args.allow_dir] or [Path.cwd()]
        missing = [str(d) for d in dirs if not d.expanduser().is_dir()]
        if missing:
            raise ConfigurationError(f"--allow-dir: not a directory: {', '.join(missing)}")
        rlm = build_rlm(args)
    except ConfigurationError as exc:
        print(f"rlm mcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        server = build_mcp_server(rlm, ContextSource(dirs, args.max_context_chars))
        server.run("stdio")
    finally:
        rlm.close()
    return 0
