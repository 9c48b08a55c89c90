"""Which client serves a call: by model name when one is asked for, else by depth.

An unknown model name is an error naming the registered ones; silently serving it with the
default client (and reporting usage under the requested name) is what the reference did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlm.clients.base import BaseLM
from rlm.errors import ConfigurationError


class Router:
    """Routes (depth, model) to a client.

    `model` names a registered client and wins over depth. Otherwise: the per-depth entry when
    there is one; at depth >= 1 the first of `others`; else the default.
    """

    def __init__(
        self,
        default: BaseLM,
        *,
        others: Sequence[BaseLM] = (),
        by_depth: Mapping[int, BaseLM] | None = None,
    ) -> None:
        self.default = default
        self.others: tuple[BaseLM, ...] = tuple(others)
        self.by_depth: dict[int, BaseLM] = dict(by_depth or {})
        for depth in self.by_depth:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
                raise ConfigurationError(f"depth_clients keys must be depths >= 0, got {depth!r}")

    def clients(self) -> list[BaseLM]:
        """Every registered client once, default first."""
        seen: list[BaseLM] = []
        for client in (self.default, *self.others, *self.by_depth.values()):
            if not any(client is known for known in seen):
                seen.append(client)
        return seen

    def route(self, depth: int, model: str | None = None) -> BaseLM:
        if model is not None:
            for client in self.clients():
                if client.model_name == model:
                    return client
            names = sorted({client.model_name for client in self.clients()})
            raise ConfigurationError(
                f"unknown model {model!r}; registered models: {', '.join(names)}"
            )
        if depth in self.by_depth:
            return self.by_depth[depth]
        if depth >= 1 and self.others:
            return self.others[0]
        return self.default

    def __repr__(self) -> str:
        names = [client.model_name for client in self.clients()]
        return f"Router(models={names!r})"
