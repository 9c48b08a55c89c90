"""The reference's `rlm.environments.e2b_repl`: `E2BREPL` with its constructor arguments.

`timeout` is the sandbox's lifetime here, as in the reference (ours: `sandbox_timeout`).
Needs the `e2b` extra.
"""

from __future__ import annotations

from rlm.environments import e2b
from rlm.environments._reference import ReferenceIsolatedREPL

__all__ = ["E2BREPL"]


class E2BREPL(ReferenceIsolatedREPL, e2b.E2BREPL):  # type: ignore[misc]  # add_history returns the index
    lifetime_kwarg = "sandbox_timeout"
