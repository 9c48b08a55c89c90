"""The reference's `rlm.environments.base_env`: the environment base classes.

`BaseEnv` is ours (`rlm.environments.base`); `IsolatedEnv` is the base of our sandboxes
(process, docker, modal, e2b); `NonIsolatedEnv` marks environments that run code in this
process (`LocalREPL`). `SupportsPersistence` is the protocol of environments that keep several
contexts and histories across `completion()` calls.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from rlm.core.types import Message
from rlm.environments.base import BaseEnv, HandlerEndpoint, ToolSpec
from rlm.environments.isolated import IsolatedEnv

__all__ = [
    "BaseEnv",
    "HandlerEndpoint",
    "IsolatedEnv",
    "NonIsolatedEnv",
    "SupportsPersistence",
    "ToolSpec",
]


class NonIsolatedEnv(BaseEnv):
    """An environment whose cells run in this process: fast, and no security boundary."""

    isolated: ClassVar[bool] = False


@runtime_checkable
class SupportsPersistence(Protocol):
    """What an environment kept across `completion()` calls (`RLM(persistent=True)`) offers."""

    def update_handler_address(self, address: tuple[str, int]) -> None: ...

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int: ...

    def get_context_count(self) -> int: ...

    def add_history(self, history: list[Message], index: int | None = None) -> int: ...

    def get_history_count(self) -> int: ...
