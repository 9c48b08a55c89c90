"""Limits shared by a whole recursion tree, owned by the host.

One `Budget` is created per top-level `completion()` and handed to every child RLM, so tokens,
cost, sub-calls and wall time are counted across the tree. Code in a sandbox only ever sees
the errors it raises; it holds no reference to it and cannot raise its limits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rlm.core.types import Usage
from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    LimitExceededError,
    SubcallLimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)


@dataclass(frozen=True)
class Limits:
    max_tokens: int | None = None
    max_budget: float | None = None
    max_timeout: float | None = None
    max_subcalls: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_budget", "max_timeout", "max_subcalls"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number or None, got {value!r}")


class Budget:
    """Counts tokens, cost and sub-calls of a recursion tree and says when a limit trips.

    `check()` raises the `LimitExceededError` of the first limit that tripped; once tripped the
    budget stays tripped, so every later request fails fast with the same reason.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.tokens = 0
        self.cost = 0.0
        self.subcalls = 0
        self._tripped: LimitExceededError | None = None

    @property
    def deadline(self) -> float | None:
        """Monotonic time at which the tree's wall-clock budget runs out."""
        if self.limits.max_timeout is None:
            return None
        return self.started + self.limits.max_timeout

    def remaining_time(self) -> float | None:
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    @property
    def tripped(self) -> LimitExceededError | None:
        with self._lock:
            return self._tripped

    def trip(self, error: LimitExceededError) -> None:
        with self._lock:
            if self._tripped is None:
                self._tripped = error

    def check(self) -> None:
        """Raise if any limit has tripped (including wall time, checked now)."""
        with self._lock:
            if self._tripped is None:
                deadline = self.deadline
                if deadline is not None and time.monotonic() >= deadline:
                    self._tripped = TimeoutExceededError(
                        f"max_timeout of {self.limits.max_timeout}s exceeded"
                    )
            if self._tripped is not None:
                raise self._tripped

    def start_subcall(self, n: int = 1) -> None:
        """Count n sub-calls before they are made; refuse them if over `max_subcalls`."""
        self.check()
        with self._lock:
            limit = self.limits.max_subcalls
            if limit is not None and self.subcalls + n > limit:
                error = SubcallLimitExceededError(f"max_subcalls of {limit} reached")
                if self.subcalls >= limit:
                    self._tripped = self._tripped or error
                raise error
            self.subcalls += n

    def record(self, usage: Usage) -> None:
        """Add one call's usage; trips the token or cost limit when it is crossed."""
        with self._lock:
            self.tokens += usage.input_tokens + usage.output_tokens
            if usage.cost is not None:
                self.cost += usage.cost
            if self._tripped is not None:
                return
            if self.limits.max_tokens is not None and self.tokens >= self.limits.max_tokens:
                self._tripped = TokenLimitExceededError(
                    f"max_tokens of {self.limits.max_tokens} reached ({self.tokens} used)"
                )
            elif self.limits.max_budget is not None and self.cost >= self.limits.max_budget:
                self._tripped = BudgetExceededError(
                    f"max_budget of ${self.limits.max_budget} reached (${self.cost:.6f} spent)"
                )
