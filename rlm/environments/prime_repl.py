"""The reference's import path: `from rlm.environments.prime_repl import PrimeREPL` keeps
working."""

from rlm.environments.prime import PrimeREPL

__all__ = ["PrimeREPL"]
