"""The reference's `rlm.clients.base_lm`: `BaseLM`, the base of every client (ours and users').

A subclass written for the reference (`completion`/`acompletion` returning `str`,
`get_usage_summary`, `get_last_usage`) works unchanged as an `RLM` backend: see
`rlm.clients.base`.
"""

from rlm.clients.base import DEFAULT_TIMEOUT, BaseLM

__all__ = ["DEFAULT_TIMEOUT", "BaseLM"]
