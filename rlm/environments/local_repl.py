"""The reference's `rlm.environments.local_repl`: `LocalREPL`, which takes its constructor
arguments (`lm_handler_address`, `context_payload`, `setup_code`, `custom_tools`, ...)."""

from rlm.environments.local import LocalREPL

__all__ = ["LocalREPL"]
