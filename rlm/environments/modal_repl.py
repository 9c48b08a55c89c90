"""The reference's `rlm.environments.modal_repl`: `ModalREPL` with its constructor arguments.

`timeout` is the sandbox's lifetime here, as in the reference (ours: `sandbox_timeout`).
Needs the `modal` extra.
"""

from __future__ import annotations

from rlm.environments import modal
from rlm.environments._reference import ReferenceIsolatedREPL

__all__ = ["ModalREPL"]


class ModalREPL(ReferenceIsolatedREPL, modal.ModalREPL):  # type: ignore[misc]  # add_history returns the index
    lifetime_kwarg = "sandbox_timeout"
