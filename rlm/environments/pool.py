"""Warm sandboxes: a pool of fresh, pre-started sandboxes so a run does not wait for one.

Starting a sandbox (a worker process, a container) costs far more than a model turn on a fast
model, and every completion and every child RLM of `rlm_query` needs its own. An `RLM` keeps a
`SandboxPool`: per environment kind and configuration (the environment keywords that shape the
sandbox: image, limits, user, confinement, ...; and the depth and tool specs, which differ
between a root and its children) it keeps sandboxes started with `IsolatedEnv(prestart=True)`
waiting, and a run takes one (`acquire`) instead of starting its own.

Isolation is unchanged, because a pooled sandbox is fresh, not recycled:
- its worker was started, with a channel token of its own, and had its hello: the limits, its
  depth and the RLM's tool specs (configuration, the same for every run). It has run no cell,
  loaded no context, and has no handler session: its requests could reach no model;
- `acquire` binds it to exactly one run (`IsolatedEnv.bind`: the run's handler session, which
  stays on the host); a sandbox is bound once, and refuses cells and contexts until then;
- a used sandbox is destroyed by its run as before (`cleanup`); it never returns to the pool.

Sizing follows use: the pool keeps as many warm as the most sandboxes in use at once during the
last burst of work (a burst ends when none is in use; the root of a completion plus the width of
its widest `rlm_query_batched`, for instance), plus one for each run that came while none was
ready (runs arriving faster than sandboxes start; one fewer after each burst without such a
wait), at least one, at most `pool_size` (default 16).
Each `acquire` starts replacements in the background. When a background start fails, the run
starts its sandbox directly, as without a pool, and a warning says why; after two failures in a
row the pool stops warming that configuration (runs then start theirs directly, as without it).

A run's sandbox is ended as before when the run ends (a container in the background: removing
it takes longer than a fast run, see `discard`). `close()` (the `RLM`'s `close()`, and a backstop at
interpreter exit or when the pool is collected) destroys every idle sandbox and waits for the
starts and ends in flight, so nothing the pool started outlives it.

Environment keywords (read here, not passed to the environment):
  pool: True / False; default: on for `process` and `docker`, off for the paid cloud sandboxes
    (a warm Modal or E2B sandbox is billed while it waits).
  pool_size: the most sandboxes kept warm per configuration (int >= 0; 0 turns the pool off).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.environments import environment_class
from rlm.environments.base import BaseEnv
from rlm.errors import ConfigurationError, SandboxError

if TYPE_CHECKING:  # imported when a sandbox is pooled: `import rlm` stays light
    from rlm.environments.isolated import IsolatedEnv

POOL_KWARGS = ("pool", "pool_size")
RUN_KWARGS = ("handler",)  # what binds a sandbox to one run: its handler session
DEFAULT_POOL_SIZE = 16
_MAX_FAILURES = 2  # background starts failing in a row before the pool stops warming

logger = logging.getLogger(__name__)


def split_pool_kwargs(environment: str, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The environment's own keywords, and how many sandboxes the pool may keep warm for it
    (0: no pool). ConfigurationError for a bad `pool` / `pool_size`."""
    rest = {k: v for k, v in kwargs.items() if k not in POOL_KWARGS}
    wanted = kwargs.get("pool")
    if wanted is not None and not isinstance(wanted, bool):
        raise ConfigurationError(f"pool must be True, False or None, got {wanted!r}")
    size = kwargs.get("pool_size", DEFAULT_POOL_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigurationError(f"pool_size must be an int >= 0, got {size!r}")
    cls = environment_class(environment)
    pooled: type[IsolatedEnv] | None = None
    if cls.isolated:  # its module, and so IsolatedEnv's, is imported already
        from rlm.environments.isolated import IsolatedEnv

        pooled = cls if issubclass(cls, IsolatedEnv) else None
    if wanted and pooled is None:
        raise ConfigurationError(
            f"environment {environment!r} has no sandbox to keep warm; drop pool=True"
        )
    if pooled is None:
        return rest, 0
    on = pooled.pool_by_default if wanted is None else wanted
    return rest, size if on else 0


def _config_key(environment: str, config: Mapping[str, Any]) -> str:
    """Identifies one configuration: sandboxes are shared only between identical ones."""
    return repr((environment, sorted(config.items())))


@dataclass(eq=False)
class _Slot:
    """The sandboxes of one environment kind and configuration."""

    cls: type[IsolatedEnv]
    config: dict[str, Any]
    size: int  # the cap
    ready: collections.deque[IsolatedEnv] = field(default_factory=collections.deque)
    pending: collections.deque[concurrent.futures.Future[IsolatedEnv]] = field(
        default_factory=collections.deque
    )
    in_use: int = 0
    peak: int = 0  # the most in use at once in the current burst
    last_peak: int = 0  # ... in the last finished burst
    failures: int = 0
    refused: str | None = None  # why this configuration is never kept warm
    started: int = 0  # sandboxes started in the background (for tests and reports)
    direct: int = 0  # ... and directly, for a run the pool had none for

    extra: int = 0  # more to keep, as runs came faster than starts
    short: bool = False  # whether a run of the current burst had to wait for a start

    def target(self) -> int:
        return min(self.size, max(1, self.peak, self.last_peak) + self.extra)


class _PoolState:
    """Everything the pool holds, apart from the pool object, so that a finalizer can close
    it when the pool is collected or the interpreter exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[str, _Slot] = {}
        self.ending: set[concurrent.futures.Future[None]] = set()  # used sandboxes being ended
        self.closed = False

    def close(self, timeout: float = 120.0) -> None:
        with self.lock:
            self.closed = True
            idle = [env for slot in self.slots.values() for env in slot.ready]
            pending: list[concurrent.futures.Future[Any]] = [
                fut for slot in self.slots.values() for fut in slot.pending
            ]
            pending += self.ending
            for slot in self.slots.values():
                slot.ready.clear()
        for env in idle:
            env.cleanup()
        # A start in flight cleans its sandbox up itself once it sees the pool closed; wait
        # for it, so that nothing the pool started outlives close().
        concurrent.futures.wait(pending, timeout=timeout)


class SandboxPool:
    """Pre-started sandboxes per environment kind and configuration (see the module doc)."""

    def __init__(self) -> None:
        self._state = _PoolState()
        self._finalizer = weakref.finalize(self, self._state.close)

    @property
    def closed(self) -> bool:
        return self._state.closed

    def direct_kwargs(self, environment: str, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """None when `acquire` serves this environment from the pool; otherwise the keywords
        to start it directly with (the pool's own switches taken out)."""
        config, size = split_pool_kwargs(environment, kwargs)
        return None if size > 0 and not self._state.closed else config

    def acquire(self, environment: str, kwargs: Mapping[str, Any]) -> BaseEnv:
        """An environment for one run: a warm sandbox bound to it when the pool has (or is
        starting) one, else one started directly. `kwargs` are the run's environment keywords,
        `handler`, `depth` and `tools` included."""
        config, size = split_pool_kwargs(environment, kwargs)
        run = {k: config.pop(k) for k in RUN_KWARGS if k in config}
        cls = environment_class(environment)
        state = self._state
        if size == 0 or state.closed:
            return cls(**config, **run)
        from rlm.environments.isolated import IsolatedEnv

        assert issubclass(cls, IsolatedEnv)
        key = _config_key(environment, config)
        with state.lock:
            slot = state.slots.get(key)
            if slot is None:
                slot = state.slots[key] = _Slot(cls, config, size)
            slot.in_use += 1
            slot.peak = max(slot.peak, slot.in_use)
            self._refill(slot)  # so that there is one to take, when the pool may warm
            warm: IsolatedEnv | concurrent.futures.Future[IsolatedEnv] | None = None
            if slot.ready:
                warm = slot.ready.popleft()
            elif slot.pending:
                warm = slot.pending.popleft()
                if slot.last_peak:  # not the first burst: runs come faster than starts
                    slot.short = True
                    slot.extra = min(slot.size, slot.extra + 1)
            self._refill(slot)  # and its replacement
        try:
            env = self._bind(slot, warm, run)
        except BaseException:
            self._release(slot)
            raise
        env._on_cleanup = lambda: self._release(slot)
        return env

    def discard(self, env: BaseEnv) -> None:
        """End a run's environment. A container is ended in the background (removing it takes
        longer than a fast run, and its files go with it), so the run returns at once; `close()`
        waits for it. Others are cleaned up here, as without a pool: a `process` sandbox's
        files in the host's /tmp must be gone before the next run starts."""
        state = self._state
        from rlm.environments.isolated import IsolatedEnv

        if not isinstance(env, IsolatedEnv) or not env.end_in_background or state.closed:
            env.cleanup()
            return
        release, env._on_cleanup = env._on_cleanup, None
        if release is not None:
            release()  # the run is over: the sandbox no longer counts as in use
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def end() -> None:
            try:
                env.cleanup()
            finally:
                with state.lock:
                    state.ending.discard(done)
                done.set_result(None)

        with state.lock:
            state.ending.add(done)
        threading.Thread(target=end, name="rlm-pool-discard", daemon=True).start()

    def close(self) -> None:
        """Destroy every idle sandbox and wait for the starts in flight. Idempotent."""
        self._finalizer()

    def stats(self) -> list[dict[str, int]]:
        """Per configuration: sandboxes ready, starting and in use, the target, and how many
        were started in the background and directly; and used sandboxes still being ended."""
        with self._state.lock:
            ending = len(self._state.ending)
            return [
                {
                    "ending": ending,
                    "ready": len(s.ready),
                    "starting": len(s.pending),
                    "in_use": s.in_use,
                    "target": s.target(),
                    "started": s.started,
                    "direct": s.direct,
                }
                for s in self._state.slots.values()
            ]

    # ------------------------------------------------------------------ internals
    def _bind(
        self,
        slot: _Slot,
        warm: IsolatedEnv | concurrent.futures.Future[IsolatedEnv] | None,
        run: dict[str, Any],
    ) -> IsolatedEnv:
        if warm is not None:
            env: IsolatedEnv | None = None
            try:
                env = _claim(warm) if isinstance(warm, concurrent.futures.Future) else warm
                env.bind(**run)
                return env
            except BaseException as exc:
                if env is not None:
                    env.cleanup()  # half-bound: it serves nobody
                if isinstance(exc, ConfigurationError) or not isinstance(exc, Exception):
                    raise  # a wrong configuration would fail a direct start alike
                logger.warning(
                    "the sandbox pool could not provide a pre-started %s sandbox (%s); "
                    "starting one directly",
                    slot.cls.name,
                    exc,
                )
        direct = slot.cls(**slot.config, **run)
        with self._state.lock:
            slot.direct += 1
        return direct

    def _refill(self, slot: _Slot) -> None:
        """Start sandboxes in the background up to the slot's target (the lock is held)."""
        if self._state.closed or slot.refused or slot.failures >= _MAX_FAILURES:
            return
        for _ in range(slot.target() - len(slot.ready) - len(slot.pending)):
            future: concurrent.futures.Future[IsolatedEnv] = concurrent.futures.Future()
            slot.pending.append(future)
            slot.started += 1
            threading.Thread(
                target=_start,
                args=(self._state, slot, future),
                name=f"rlm-pool-{slot.cls.name}",
                daemon=True,
            ).start()

    def _release(self, slot: _Slot) -> None:
        """A run's sandbox was cleaned up. When the burst ends, keep only the target warm."""
        extra: list[IsolatedEnv] = []
        with self._state.lock:
            slot.in_use -= 1
            if slot.in_use == 0:
                slot.last_peak, slot.peak = slot.peak, 0
                if not slot.short:
                    slot.extra = max(0, slot.extra - 1)
                slot.short = False
                while len(slot.ready) > slot.target():
                    extra.append(slot.ready.pop())
        for env in extra:
            env.cleanup()


def _claim(future: concurrent.futures.Future[IsolatedEnv]) -> IsolatedEnv:
    """The sandbox of a start in flight that this run has claimed (waits for it)."""
    try:
        return future.result()
    except BaseException:
        # Interrupted while waiting: the sandbox, once up, belongs to nobody; destroy it.
        future.add_done_callback(_discard)
        raise


def _discard(future: concurrent.futures.Future[IsolatedEnv]) -> None:
    if future.exception() is None:
        future.result().cleanup()


def _start(state: _PoolState, slot: _Slot, future: concurrent.futures.Future[IsolatedEnv]) -> None:
    """Background start of one sandbox; it goes to the ready list unless a run claimed it."""
    try:
        env = slot.cls(prestart=True, **slot.config)
        refusal = env.pool_refusal()
        if refusal is not None:
            env.cleanup()
            with state.lock:
                slot.refused = refusal  # the same for every sandbox of this configuration
            raise SandboxError(f"not kept warm: {refusal}")
    except BaseException as exc:
        with state.lock:
            slot.failures += 1
            stopped = slot.failures == _MAX_FAILURES and slot.refused is None
            claimed = future not in slot.pending
            if not claimed:
                slot.pending.remove(future)
        if stopped:
            logger.warning(
                "the sandbox pool stops warming %s sandboxes of this configuration after "
                "%d failed starts in a row",
                slot.cls.name,
                _MAX_FAILURES,
            )
        if not claimed:  # nobody waits for it to say why: say it here
            logger.warning(
                "the sandbox pool could not pre-start a %s sandbox (%s); runs start theirs "
                "directly",
                slot.cls.name,
                exc,
            )
        future.set_exception(exc)
        return
    discard = False
    with state.lock:
        slot.failures = 0
        if future in slot.pending:
            slot.pending.remove(future)
            if state.closed:
                discard = True
            else:
                slot.ready.append(env)
    if discard:
        with contextlib.suppress(Exception):
            env.cleanup()
    future.set_result(env)
