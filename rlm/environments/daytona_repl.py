"""The reference's import path: `from rlm.environments.daytona_repl import DaytonaREPL` keeps
working."""

from rlm.environments.daytona import DaytonaREPL

__all__ = ["DaytonaREPL"]
