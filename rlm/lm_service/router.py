"""Which client serves a call: by model name when one is asked for, else by depth.

A model name nobody registered is served by the depth's client asking the provider for that
model (`BaseLM.with_model`), as the reference does for `rlm_query(p, model=...)`; usage is then
recorded under the model actually called. (The reference's `llm_query` served it with the
default model while labelling the usage with the requested name: pitfall U7.)
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping, Sequence

from rlm.clients.base import BaseLM
from rlm.errors import ConfigurationError

MAX_MODEL_NAME = 256
# Unregistered model names served on a registered backend (`model=` in a sub-call) kept per
# router: a run asks for a handful; code asking for thousands must not make the host hold a
# client for each (a twin is a cheap copy sharing its base's connections: dropping one is free).
MAX_TWINS = 64


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
        # (id of base client, model) -> twin, least recently used first
        self._twins: collections.OrderedDict[tuple[int, str], BaseLM] = collections.OrderedDict()
        self._twins_lock = threading.Lock()
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
            if not isinstance(model, str) or not model.strip():
                raise ConfigurationError(f"model must be a non-empty str, got {model!r}")
            if len(model) > MAX_MODEL_NAME:
                raise ConfigurationError(f"model name longer than {MAX_MODEL_NAME} characters")
            base = self._by_depth(depth)
            key = (id(base), model)
            with self._twins_lock:
                twin = self._twins.get(key)
                if twin is None:
                    twin = self._twins[key] = base.with_model(model)
                    while len(self._twins) > MAX_TWINS:  # the least recently used goes
                        self._twins.popitem(last=False)
                else:
                    self._twins.move_to_end(key)
            return twin
        return self._by_depth(depth)

    def _by_depth(self, depth: int) -> BaseLM:
        if depth in self.by_depth:
            return self.by_depth[depth]
        if depth >= 1 and self.others:
            return self.others[0]
        return self.default

    def __repr__(self) -> str:
        names = [client.model_name for client in self.clients()]
        return f"Router(models={names!r})"
