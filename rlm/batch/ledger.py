"""One budget over a whole batch: every LM call of every task, on any node, draws from it.

A task's own `Budget` (rlm/lm_service/budget.py) reserves each call's worst case before it is sent
and settles it after; with a batch ledger as its `parent`, the same reservation is also held
here, so `max_budget` / `max_tokens` of the batch hold across concurrent tasks exactly as a
task's limits hold across its concurrent sub-calls: a call that does not fit waits for calls in
flight, runs alone when nothing else is in flight (so the overshoot is at most one call), and
is refused once the limit is reached. Once tripped, every task's next call fails with the
limit's error and the batch's remaining tasks end at once.

`BatchLedger` lives in the process that runs the tasks; `RayLedger` wraps it in a Ray actor
and `LedgerClient` is what a task on any node holds.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    LimitExceededError,
    TokenLimitExceededError,
)

ADMITTED, WAIT = "admitted", "wait"
# How often a call waiting for room asks again (the ledger may be on another node).
POLL_SECONDS = 0.05


class BatchLedger:
    """Tokens and cost of a batch, with reservations; safe to share between threads."""

    def __init__(self, max_budget: float | None = None, max_tokens: int | None = None) -> None:
        for name, value in (("max_budget", max_budget), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number or None")
        self.max_budget = max_budget
        self.max_tokens = max_tokens
        self.tokens = 0
        self.cost = 0.0
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.in_flight = 0
        self._tripped: LimitExceededError | None = None
        self._lock = threading.Lock()

    def reserve(self, tokens: int, cost: float | None) -> str:
        """ADMITTED (the call may go), WAIT (ask again after calls in flight settle), or the
        limit's error raised when the batch has reached it."""
        with self._lock:
            if self._tripped is not None:
                raise self._tripped
            fits = self.max_tokens is None or (
                self.tokens + self.reserved_tokens + tokens <= self.max_tokens
            )
            if self.max_budget is not None:
                fits = fits and (
                    cost is not None and self.cost + self.reserved_cost + cost <= self.max_budget
                )
            if not fits and self.in_flight:
                return WAIT
            self.in_flight += 1
            self.reserved_tokens += tokens
            self.reserved_cost += cost or 0.0
            return ADMITTED

    def reserve_or_error(self, tokens: int, cost: float | None) -> Any:
        """`reserve` with the limit's error returned as data (kind, message), so that it
        crosses a Ray actor boundary as a typed error rather than a wrapped one."""
        try:
            return self.reserve(tokens, cost)
        except TokenLimitExceededError as exc:
            return ("tokens", str(exc))
        except LimitExceededError as exc:
            return ("budget", str(exc))

    def settle(
        self, tokens: int, cost: float | None, used_tokens: int, used_cost: float, held: bool = True
    ) -> None:
        """A call that held (`tokens`, `cost`) finished having used (`used_*`); `held` False
        records usage that was never reserved (a cache hit, say)."""
        with self._lock:
            if held:
                self._release(tokens, cost)
            self.tokens += used_tokens
            self.cost += used_cost
            if self._tripped is not None:
                return
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                used = f"the batch's max_tokens of {self.max_tokens} reached ({self.tokens} used)"
                self._tripped = TokenLimitExceededError(self.tokens, self.max_tokens, message=used)
            elif self.max_budget is not None and self.cost >= self.max_budget:
                spent = (
                    f"the batch's max_budget of ${self.max_budget} reached (${self.cost:.6f} spent)"
                )
                self._tripped = BudgetExceededError(self.cost, self.max_budget, spent)

    def release(self, tokens: int, cost: float | None) -> None:
        """A call that held (`tokens`, `cost`) failed before it used anything."""
        with self._lock:
            self._release(tokens, cost)

    def _release(self, tokens: int, cost: float | None) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.reserved_tokens = max(0, self.reserved_tokens - tokens)
        self.reserved_cost = max(0.0, self.reserved_cost - (cost or 0.0))

    def totals(self) -> dict[str, Any]:
        """Spent so far, and the limit error's message once the batch reached a limit."""
        with self._lock:
            tripped = None if self._tripped is None else str(self._tripped)
            return {"tokens": self.tokens, "cost": self.cost, "tripped": tripped}


class LedgerClient:
    """What a task's `Budget` holds as its parent: `areserve` / `settle` / `release` against
    a `BatchLedger` in this process or, through `RayLedger`, anywhere in the cluster."""

    def __init__(self, ledger: BatchLedger | Any) -> None:
        self._ledger = ledger
        self._remote = not isinstance(ledger, BatchLedger)

    def _call(self, method: str, *args: Any, wait: bool = True) -> Any:
        if not self._remote:
            return getattr(self._ledger, method)(*args)
        import ray

        ref = getattr(self._ledger, method).remote(*args)
        return ray.get(ref) if wait else None  # settling needs no answer: do not block on it

    async def areserve(self, tokens: int, cost: float | None) -> None:
        """Wait until the batch admits a call of this worst case; raise its limit error."""
        while True:
            if self._remote:
                state = await asyncio.to_thread(self._call, "reserve_or_error", tokens, cost)
            else:
                state = self._ledger.reserve_or_error(tokens, cost)
            if state == ADMITTED:
                return
            if state != WAIT:
                kind, message = state
                if kind == "tokens":
                    raise TokenLimitExceededError(message=message)
                raise BudgetExceededError(message=message)
            await asyncio.sleep(POLL_SECONDS)

    def settle(
        self, tokens: int, cost: float | None, used_tokens: int, used_cost: float, held: bool = True
    ) -> None:
        self._call("settle", tokens, cost, used_tokens, used_cost, held, wait=False)

    def release(self, tokens: int, cost: float | None) -> None:
        self._call("release", tokens, cost, wait=False)

    def totals(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("totals")
        return result


def ray_ledger(max_budget: float | None, max_tokens: int | None) -> Any:
    """A `BatchLedger` in a Ray actor (one per batch), for tasks on any node."""
    from rlm._optional import require

    ray = require("ray", extra="ray")
    actor_cls = ray.remote(num_cpus=0)(BatchLedger)
    return actor_cls.remote(max_budget, max_tokens)
