"""The sub-call cache: LM answers stored by the content of the request, in SQLite.

Opt in with `RLM(..., cache=True | path | SubcallCache(path))`. Every LM call of a run (root
turns included, so a re-run can be entirely provider-free) is looked up by the SHA-256 of the
canonical JSON of (provider, model, endpoint, messages, sampling arguments); a hit returns the
stored answer with `LMResponse.cached=True` and zero cost, and is counted in
`ModelUsageSummary.cache_hits`. The file is shared by threads and processes (WAL mode, a busy
timeout), so parallel runs and later runs reuse each other's answers.

A hit replays an answer instead of sampling a new one: use the cache for reproducible re-runs,
development and benchmarks, not where a fresh sample per call is the point. A row that cannot
be read (corrupt JSON, a wrong shape) is a miss and is overwritten; a database error during a
run is logged and treated as a miss, never raised into the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlm.aio import to_thread
from rlm.core.types import LMResponse, Prompt, Usage, to_messages
from rlm.errors import ConfigurationError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS subcalls (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """`$RLM_CACHE_PATH`, else `$XDG_CACHE_HOME/rlm/subcalls.sqlite3` (~/.cache by default)."""
    explicit = os.environ.get("RLM_CACHE_PATH")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlm" / "subcalls.sqlite3"


def cache_key(
    *,
    provider: str,
    model: str,
    endpoint: str | None,
    prompt: Prompt,
    sampling: Mapping[str, Any],
) -> str | None:
    """SHA-256 of the canonical JSON of the request; None when it is not JSON (not cached)."""
    request = {
        "v": SCHEMA_VERSION,
        "provider": provider,
        "model": model,
        "endpoint": endpoint,
        "messages": to_messages(prompt),
        "sampling": dict(sampling),
    }
    try:
        canonical = json.dumps(
            request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class SubcallCache:
    """A SQLite file of request hash -> LM answer, safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(
                f"cannot open the sub-call cache at {self.path}: {exc}"
            ) from exc

    @classmethod
    def of(cls, value: SubcallCache | str | os.PathLike[str] | bool | None) -> SubcallCache | None:
        """The cache an `RLM(cache=...)` argument asks for: True is the default path."""
        if value is None or value is False:
            return None
        if isinstance(value, SubcallCache):
            return value
        if value is True:
            return cls()
        if isinstance(value, (str, os.PathLike)):
            return cls(value)
        raise ConfigurationError(
            f"cache must be a SubcallCache, a path, True or None, not {type(value).__name__}"
        )

    # -- lookups -----------------------------------------------------------------------------

    def get(self, key: str) -> LMResponse | None:
        """The stored answer, marked cached and free; None on a miss or an unreadable row."""
        try:
            with self._lock:
                if self._db is None:
                    return None
                row = self._db.execute(
                    "SELECT response FROM subcalls WHERE key = ?", (key,)
                ).fetchone()
        except sqlite3.Error as exc:
            logger.warning("sub-call cache lookup failed (treated as a miss): %s", exc)
            row = None
        response = _decode(row[0]) if row is not None else None
        with self._lock:
            if response is None:
                self.misses += 1
            else:
                self.hits += 1
        return response

    def put(self, key: str, response: LMResponse) -> None:
        """Store an answer (replacing an unreadable row); failures are logged, not raised."""
        data = {"text": response.text, "model": response.model, "usage": response.usage.to_dict()}
        try:
            payload = json.dumps(data, ensure_ascii=False, allow_nan=False)
            with self._lock:
                if self._db is None:
                    return
                self._db.execute(
                    "INSERT OR REPLACE INTO subcalls (key, response, created) VALUES (?, ?, ?)",
                    (key, payload, time.time()),
                )
        except (TypeError, ValueError, sqlite3.Error) as exc:
            logger.warning("sub-call cache store failed (answer not cached): %s", exc)

    async def aget(self, key: str) -> LMResponse | None:
        """`get` in the worker pool: a busy database must not stall the event loop."""
        return await to_thread(self.get, key)

    async def aput(self, key: str, response: LMResponse) -> None:
        await to_thread(self.put, key, response)

    # -- housekeeping ------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            (count,) = self._db.execute("SELECT COUNT(*) FROM subcalls").fetchone()
        return int(count)

    def clear(self) -> None:
        """Forget every stored answer (for every process sharing the file)."""
        with self._lock:
            if self._db is not None:
                self._db.execute("DELETE FROM subcalls")

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def __repr__(self) -> str:
        return f"SubcallCache({str(self.path)!r})"


def _decode(raw: Any) -> LMResponse | None:
    try:
        data = json.loads(raw)
        text, model = data["text"], data.get("model", "")
        if not isinstance(text, str) or not isinstance(model, str):
            return None
        stored = Usage.from_dict(data.get("usage") or {})
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    # Nothing was spent on this call: tokens are what the original call used, the cost is 0.
    usage = Usage(
        input_tokens=stored.input_tokens,
        output_tokens=stored.output_tokens,
        cached_tokens=stored.cached_tokens,
        cache_write_tokens=stored.cache_write_tokens,
        cost=0.0,
    )
    return LMResponse(text, model, usage, 0.0, cached=True)
