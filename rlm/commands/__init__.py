"""Subcommands of the `rlm` command line, one module each (see `rlm.cli`).

Each module defines `add_arguments(parser)` and `main(args) -> int` and is imported only when
its subcommand runs.
"""
