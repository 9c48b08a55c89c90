"""The `rlm` command: `rlm run | replay | view | bench | demo | batch | serve | mcp`.

Each subcommand lives in its own module with `add_arguments(parser)` and `main(args) -> int`,
imported only when that subcommand runs, so `rlm --help` stays fast and needs no SDK.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("rlm.commands.run", "run one completion from the command line"),
    "replay": ("rlm.commands.replay", "render a recorded run, or re-execute it (--rerun)"),
    "view": ("rlm.commands.view", "serve the trajectory visualizer for a log directory"),
    "export": ("rlm.commands.export", "convert a trajectory log to the reference's format"),
    "bench": ("rlm.bench.cli", "long-context benchmarks (S-NIAH, OOLONG, OOLONG-Pairs)"),
    "demo": ("rlm.commands.demo", "a complete RLM run over a generated long document"),
    "batch": ("rlm.commands.batch", "run a file of tasks, in process or on a Ray cluster"),
    "serve": ("rlm.commands.serve", "an OpenAI-compatible HTTP endpoint in front of an RLM"),
    "mcp": ("rlm.commands.mcp", "an MCP server (stdio) with an rlm_completion tool"),
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so the cleanup that Ctrl-C runs (sandboxes
    killed, containers removed, logs closed) runs at once."""


EXIT_TERMINATED = 128 + signal.SIGTERM
# Statuses after which the process ends at once rather than wait for leftover worker threads.
_ABANDON_WORK = frozenset({128 + signal.SIGINT, EXIT_TERMINATED, 128 + signal.SIGPIPE})


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[bool]]:
    """While the command runs, SIGTERM raises `Terminated` in the main thread. Without it
    the process dies without running any code, and a sandbox lives on until its cell's
    timeout. Only the main thread may install signal handlers; elsewhere nothing changes."""
    received: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        received.append(True)
        if len(received) == 1:
            raise Terminated("terminated by SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process now
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _live_sandboxes() -> weakref.WeakSet[Any]:
    if "rlm.environments.isolated" not in sys.modules:
        return weakref.WeakSet()
    from rlm.environments.sandbox_base import live_sandboxes

    return weakref.WeakSet(live_sandboxes())


def _kill_new_sandboxes(before: weakref.WeakSet[Any]) -> None:
    """Sandboxes the command started that are still alive when it ends: an interrupted run's
    cleanup runs on the event loop and may lose the race with the interpreter's exit. Killed
    now, not at the running cell's timeout."""
    if "rlm.environments.isolated" in sys.modules:
        from rlm.environments.sandbox_base import kill_live_sandboxes

        kill_live_sandboxes("the rlm command ended", keep=before)


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if argv is None and code in _ABANDON_WORK:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process now, as the program (not a caller passing `argv`) after an interrupt.

    The command's cleanup has run (logs ended, sandboxes killed), but a cell of the `local`
    environment may still be running user code in a worker thread, and the interpreter's exit
    would wait for it (a `time.sleep(600)` cell holds Ctrl-C for ten minutes)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
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
    parsed = parser.parse_args(rest)
    before = _live_sandboxes()
    from rlm.commands import output

    with _sigterm_interrupts() as terminated:
        try:
            result: int = module.main(parsed)
        except BrokenPipeError:  # the reader of stdout (or stderr) went away: end quietly
            output.output_closed()
            return output.EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            if output.is_closed():
                return output.EXIT_BROKEN_PIPE
            if not terminated:
                raise
            result = EXIT_TERMINATED
        finally:
            _kill_new_sandboxes(before)
        if terminated:  # the command may have turned the interrupt into its own status
            print("rlm: terminated", file=sys.stderr)
            return EXIT_TERMINATED
    return result


if __name__ == "__main__":
    sys.exit(main())
