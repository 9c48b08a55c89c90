"""Limits shared by a whole recursion tree, owned by the host.

One `Budget` is created per top-level `completion()` and handed to every child RLM, so tokens,
cost, sub-calls and wall time are counted across the tree. Code in a sandbox only ever sees
the errors it raises; it holds no reference to it and cannot raise its limits.

Token and cost limits hold for concurrent calls too. Checking "spent < limit" before each call
is not enough: a batch of 500 items all pass that check before the first one is paid for. So
every LM call *reserves* its worst case before it is sent and *settles* with its real usage
after; a call is admitted while the reserved worst cases of everything in flight still fit
under the limit. A call that does not fit waits for calls in flight to settle (their real usage
is usually far below the worst case); when nothing else is in flight it is admitted alone, so
a limit is overshot by at most one call's worth. Once a limit is reached every waiting and
later call is refused with the limit's typed error.

The worst case of a call: its prompt's UTF-8 byte count plus a per-message overhead bounds its
input tokens (a BPE token is at least one byte); its output is bounded by the call's max output
tokens (`sampling_args` `max_tokens` / `max_completion_tokens` / `max_output_tokens`, or the
client's own default) and, when the call sets none, estimated as the largest output the model
has produced in this tree so far, at least `DEFAULT_OUTPUT_ESTIMATE`. Only a call without an
output cap can go past its estimate; set `max_tokens` in `sampling_args` for a hard bound.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlm.clients.pricing import rates
from rlm.core.types import Prompt, Usage, to_messages
from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    LimitExceededError,
    SubcallLimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

# Output tokens reserved for a call that sets no max output tokens, until the model has shown
# it writes more. Generous on purpose: an under-estimate is what lets a limit be overshot.
DEFAULT_OUTPUT_ESTIMATE = 4096
# Role markers and separators a chat format adds per message (OpenAI: 3-4 tokens).
MESSAGE_OVERHEAD_TOKENS = 8
OUTPUT_CAP_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Ledger(Protocol):
    """A budget above a tree's (a batch's, `rlm.batch.ledger`): each call of the tree holds
    its worst case there too, and settles or releases it there too."""

    async def areserve(self, tokens: int, cost: float | None) -> None: ...

    def settle(
        self, tokens: int, cost: float | None, used_tokens: int, used_cost: float, held: bool
    ) -> None: ...

    def release(self, tokens: int, cost: float | None) -> None: ...


class PricedClient(Protocol):
    """What the budget reads from a client (`rlm.clients.base.BaseLM` has all of it)."""

    model_name: str

    def price_table(self) -> Mapping[str, float] | None: ...

    def max_output_tokens(self, sampling: Mapping[str, Any]) -> int | None: ...


@dataclass(frozen=True)
class Limits:
    max_tokens: int | None = None
    max_budget: float | None = None
    max_timeout: float | None = None
    max_subcalls: int | None = None
    # With max_budget set, a model without a known price is refused before the first call
    # unless this is True; its calls then count $0 towards max_budget (and make totals partial).
    allow_unpriced_models: bool = False

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_budget", "max_timeout", "max_subcalls"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number or None, got {value!r}")


def reports_cost(client: object) -> bool:
    """True for clients whose provider prices each call itself (OpenRouter's `usage.cost`)."""
    return bool(getattr(client, "reports_cost", False))


def check_priced(clients: Sequence[PricedClient], limits: Limits) -> None:
    """Refuse `max_budget` when a model has no price: the budget could not see its spending."""
    if limits.max_budget is None or limits.allow_unpriced_models:
        return
    unpriced = sorted(
        {c.model_name for c in clients if c.price_table() is None and not reports_cost(c)}
    )
    if unpriced:
        names = ", ".join(repr(name) for name in unpriced)
        raise ConfigurationError(
            f"max_budget is set but rlm has no price for {names}, so it cannot count what "
            "calls to it cost. Give it a price (USD per 1M tokens): "
            f"rlm.clients.pricing.register_price({unpriced[0]!r}, input=..., output=...) or "
            'backend_kwargs={"prices": {"input": ..., "output": ...}}; or pass '
            "allow_unpriced_models=True to count its calls as $0 against max_budget."
        )


def prompt_token_bound(prompt: Prompt) -> int:
    """An upper bound on a prompt's input tokens: UTF-8 bytes plus a per-message overhead."""
    total = MESSAGE_OVERHEAD_TOKENS
    for message in to_messages(prompt):
        content = message.get("content", "")
        text = content if isinstance(content, str) else str(content)
        total += len(text.encode("utf-8", "surrogatepass")) + MESSAGE_OVERHEAD_TOKENS
    return total


@dataclass(frozen=True)
class Reservation:
    """The worst case of one call, held against the limits while the call is in flight.

    `cost` is None when the worst-case cost is unknown (a provider that prices its own calls
    and has not been seen yet): such a call is admitted under `max_budget` only alone.
    """

    model: str
    tokens: int
    cost: float | None


@dataclass(eq=False)
class _Waiter:
    reservation: Reservation
    future: asyncio.Future[None]
    admitted: bool = False


@dataclass
class _ModelSeen:
    """What the tree has seen of one model: the longest output, the dearest cost per token."""

    max_output: int = 0
    max_cost_per_token: float | None = None


class Budget:
    """Counts tokens, cost and sub-calls of a recursion tree and says when a limit trips.

    `check()` raises the `LimitExceededError` of the first limit that tripped; once tripped the
    budget stays tripped, so every later request fails fast with the same reason. LM calls go
    through `reserve` / `settle` (or `release` when the call failed), see the module docstring.
    """

    def __init__(self, limits: Limits, parent: Ledger | None = None) -> None:
        self.limits = limits
        self.parent = parent
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.tokens = 0
        self.cost = 0.0
        self.subcalls = 0
        self.unpriced_calls = 0  # calls whose cost is unknown: `cost` leaves them out
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.in_flight = 0
        self.max_in_flight = 0  # the most calls admitted at once (tests, diagnostics)
        self._unknown_in_flight = 0  # admitted calls whose worst-case cost is unknown
        self._seen: dict[str, _ModelSeen] = {}
        self._waiters: collections.deque[_Waiter] = collections.deque()
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
            self._wake()

    def check(self) -> None:
        """Raise if any limit has tripped (including wall time, checked now)."""
        with self._lock:
            self._check_locked()

    def _timeout_error(self) -> TimeoutExceededError:
        timeout = self.limits.max_timeout or 0.0
        return TimeoutExceededError(
            elapsed=time.monotonic() - self.started,
            timeout=timeout,
            message=f"max_timeout of {self.limits.max_timeout}s exceeded",
        )

    def _check_locked(self) -> None:
        if self._tripped is None:
            deadline = self.deadline
            if deadline is not None and time.monotonic() >= deadline:
                self._tripped = self._timeout_error()
        if self._tripped is not None:
            # One error object is raised by every refused call: drop the previous traceback so
            # it does not grow with each raise.
            raise self._tripped.with_traceback(None)

    def start_subcall(self, n: int = 1) -> None:
        """Count n sub-calls before they are made; refuse them if over `max_subcalls`."""
        with self._lock:
            self._check_locked()
            limit = self.limits.max_subcalls
            if limit is not None and self.subcalls + n > limit:
                error = SubcallLimitExceededError(
                    subcalls=self.subcalls, limit=limit, message=f"max_subcalls of {limit} reached"
                )
                if self.subcalls >= limit:
                    self._tripped = self._tripped or error
                raise error
            self.subcalls += n

    # -- reservations ------------------------------------------------------------------------

    def estimate(
        self, client: PricedClient, prompt: Prompt, sampling: Mapping[str, Any]
    ) -> Reservation:
        """The worst case of calling `client` with `prompt` and these sampling arguments."""
        input_tokens = prompt_token_bound(prompt)
        output_tokens = client.max_output_tokens(sampling)
        with self._lock:
            seen = self._seen.get(client.model_name, _ModelSeen())
        if output_tokens is None:
            output_tokens = max(DEFAULT_OUTPUT_ESTIMATE, seen.max_output)
        tokens = input_tokens + output_tokens
        prices = client.price_table()
        cost: float | None
        if prices is not None:
            prices = rates(prices, input_tokens)  # the long-context band, when it applies
            # The dearest input rate: cache writes cost more than fresh input on some providers.
            input_rate = max(
                prices["input"], prices.get("cache_write", 0.0), prices.get("cached_input", 0.0)
            )
            cost = (input_tokens * input_rate + output_tokens * prices["output"]) / 1_000_000
        elif reports_cost(client):
            rate = seen.max_cost_per_token
            cost = None if rate is None else tokens * rate
        else:  # unpriced: refused up front unless the user counts it as free
            cost = 0.0
        return Reservation(client.model_name, tokens, cost)

    async def reserve(self, reservation: Reservation) -> None:
        """Hold `reservation` against the limits, waiting while it does not fit.

        Raises the tripped limit's error when a limit is reached before the call is admitted,
        and `TimeoutExceededError` when the tree's wall time runs out while waiting.
        """
        with self._lock:
            self._check_locked()
            if not self._waiters and self._fits(reservation):
                self._admit(reservation)
                waiter = None
            else:
                waiter = _Waiter(reservation, asyncio.get_running_loop().create_future())
                self._waiters.append(waiter)
        if waiter is not None:
            await self._wait(waiter)
        if self.parent is not None:
            await self._reserve_in_parent(reservation)

    async def _reserve_in_parent(self, reservation: Reservation) -> None:
        """Hold the same worst case in the parent ledger (a batch's), once admitted here."""
        assert self.parent is not None
        try:
            await self.parent.areserve(reservation.tokens, reservation.cost)
        except BaseException as exc:
            with self._lock:
                self._unhold(reservation)
                if isinstance(exc, LimitExceededError) and self._tripped is None:
                    self._tripped = exc  # the batch is spent: this tree stops too
                self._wake()
            raise

    async def _wait(self, waiter: _Waiter) -> None:
        reservation = waiter.reservation
        try:
            async with asyncio.timeout(self.remaining_time()):
                await waiter.future
        except BaseException as exc:  # refused, cancelled or out of time
            with self._lock:
                if waiter.admitted:  # admitted as the cancellation arrived: give it back
                    self._unhold(reservation)
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError) and self._tripped is None:
                    self._tripped = self._timeout_error()
                self._wake()  # who was queued behind this call may fit now
                if isinstance(exc, TimeoutError):
                    self._check_locked()
            raise

    def settle(self, reservation: Reservation | None, usage: Usage) -> None:
        """Replace a call's reservation with its real usage; trips a limit when it is reached.

        `reservation` None records usage that was never reserved.
        """
        if self.parent is not None:
            cost = usage.cost if usage.cost is not None else (reservation and reservation.cost)
            held = (0, 0.0) if reservation is None else (reservation.tokens, reservation.cost)
            self.parent.settle(
                held[0],
                held[1],
                usage.input_tokens + usage.output_tokens,
                cost or 0.0,
                reservation is not None,
            )
        with self._lock:
            if reservation is not None:
                self._unhold(reservation)
            tokens = usage.input_tokens + usage.output_tokens
            self.tokens += tokens
            if usage.cost is not None:
                self.cost += usage.cost
            elif reservation is not None and reservation.cost:
                # A provider that prices its own calls sent no price: count the worst case.
                self.cost += reservation.cost
                self.unpriced_calls += 1
            else:
                self.unpriced_calls += 1
            model = reservation.model if reservation is not None else None
            if model is not None:
                seen = self._seen.setdefault(model, _ModelSeen())
                seen.max_output = max(seen.max_output, usage.output_tokens)
                if usage.cost is not None and tokens > 0:
                    rate = usage.cost / tokens
                    if seen.max_cost_per_token is None or rate > seen.max_cost_per_token:
                        seen.max_cost_per_token = rate
            self._trip_if_reached()
            self._wake()

    def release(self, reservation: Reservation) -> None:
        """Give back the reservation of a call that failed or was answered without one."""
        if self.parent is not None:
            self.parent.release(reservation.tokens, reservation.cost)
        with self._lock:
            self._unhold(reservation)
            self._wake()

    # -- internals (called with the lock held) ----------------------------------------------

    def _fits(self, reservation: Reservation) -> bool:
        if self.in_flight == 0:
            return True  # alone: at most this one call's worth over the limit
        limits = self.limits
        held_tokens = self.tokens + self.reserved_tokens + reservation.tokens
        if limits.max_tokens is not None and held_tokens > limits.max_tokens:
            return False
        if limits.max_budget is not None:
            if reservation.cost is None or self._unknown_in_flight:
                return False
            if self.cost + self.reserved_cost + reservation.cost > limits.max_budget:
                return False
        return True

    def _admit(self, reservation: Reservation) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.reserved_tokens += reservation.tokens
        if reservation.cost is None:
            self._unknown_in_flight += 1
        else:
            self.reserved_cost += reservation.cost

    def _unhold(self, reservation: Reservation) -> None:
        self.in_flight -= 1
        self.reserved_tokens -= reservation.tokens
        if reservation.cost is None:
            self._unknown_in_flight -= 1
        else:
            self.reserved_cost = max(0.0, self.reserved_cost - reservation.cost)
        if self.in_flight == 0:
            self.reserved_cost = 0.0  # no float drift once nothing is held

    def _trip_if_reached(self) -> None:
        if self._tripped is not None:
            return
        limits = self.limits
        if limits.max_tokens is not None and self.tokens >= limits.max_tokens:
            self._tripped = TokenLimitExceededError(
                tokens_used=self.tokens,
                token_limit=limits.max_tokens,
                message=f"max_tokens of {limits.max_tokens} reached ({self.tokens} used)",
            )
        elif limits.max_budget is not None and self.cost >= limits.max_budget:
            self._tripped = BudgetExceededError(
                spent=self.cost,
                budget=limits.max_budget,
                message=f"max_budget of ${limits.max_budget} reached (${self.cost:.6f} spent)",
            )

    def _wake(self) -> None:
        """Admit waiting calls in arrival order while they fit; refuse them all once tripped."""
        while self._waiters:
            waiter = self._waiters[0]
            if self._tripped is None and not self._fits(waiter.reservation):
                return
            self._waiters.popleft()
            if self._tripped is None:
                waiter.admitted = True
                self._admit(waiter.reservation)
                _resolve(waiter.future, None)
            else:
                _resolve(waiter.future, self._tripped)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Complete a waiter's future from any thread (the budget is shared across threads)."""

    def complete() -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    loop = future.get_loop()
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(complete)
