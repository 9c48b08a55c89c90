"""The `rlm` command: `rlm run | replay | view | bench | demo`.

Each subcommand lives in its own module with `add_arguments(parser)` and `main(args) -> int`,
imported only when that subcommand runs, so `rlm --help` stays fast and needs no SDK.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("rlm.commands.run", "run one completion from the command line"),
    "replay": ("rlm.commands.replay", "render a recorded run, or re-execute it (--rerun)"),
    "view": ("rlm.commands.view", "serve the trajectory visualizer for a log directory"),
    "bench": ("rlm.bench.cli", "long-context benchmarks (S-NIAH, OOLONG, OOLONG-Pairs)"),
    "demo": ("rlm.commands.demo", "a complete RLM run over a generated long document"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="Recursive Language Models")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _version() -> str:
    from rlm import __version__

    return f"rlm {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(args)  # --help / --version / an unknown command exit here
        parser.print_help()
        return 2
    name, rest = args[0], args[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"rlm {name}", description=help_text)
    module.add_arguments(parser)
    result: int = module.main(parser.parse_args(rest))
    return result


if __name__ == "__main__":
    sys.exit(main())
