"""Prompt-cache simulation: which prompt prefixes a provider would have cached already.

Prefixes are hashed at message (or Anthropic content-block) granularity, so equal prefixes are
recognised without keeping prompt text. The rules follow each provider's documented behaviour;
see the `rlm.testing.simulator` docstring.
"""

from __future__ import annotations

import collections
import hashlib
import threading

from rlm.testing._wire_common import Segment, tokens_of

CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
CACHE_MAX_ENTRIES = 200_000


class PromptCache:
    """Hashes of prompt prefixes seen per (wire, model); bounded, least recently used dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    @staticmethod
    def prefix_hashes(scope: str, segments: list[Segment]) -> list[bytes]:
        digest = hashlib.blake2b(scope.encode(), digest_size=16).digest()
        hashes = []
        for seg in segments:
            h = hashlib.blake2b(digest, digest_size=16)
            h.update(seg.role.encode())
            h.update(b"\0")
            h.update(seg.text.encode("utf-8", "surrogatepass"))
            digest = h.digest()
            hashes.append(digest)
        return hashes

    def _hit(self, key: bytes) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def _store(self, key: bytes) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > CACHE_MAX_ENTRIES:
            self._seen.popitem(last=False)

    def prefix_rule(self, scope: str, segments: list[Segment]) -> int:
        """OpenAI/Gemini: cached tokens of the longest prefix seen before (>= 1024, by 128s)."""
        hashes = self.prefix_hashes("prefix:" + scope, segments)
        chars = cumulative_chars(segments)
        with self._lock:
            longest = next((i for i in range(len(hashes) - 1, -1, -1) if self._hit(hashes[i])), -1)
            for h in hashes:
                self._store(h)
        if longest < 0:
            return 0
        tokens = tokens_of(chars[longest])
        if tokens < CACHE_MIN_TOKENS:
            return 0
        return tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS

    def breakpoint_rule(self, scope: str, segments: list[Segment]) -> tuple[int, int]:
        """Anthropic: (read, written) tokens for the request's cache_control breakpoints."""
        marks = [i for i, seg in enumerate(segments) if seg.marked]
        if not marks:
            return 0, 0
        hashes = self.prefix_hashes("breakpoint:" + scope, segments)
        chars = cumulative_chars(segments)
        last = marks[-1]
        with self._lock:
            hit = next((i for i in range(last, -1, -1) if self._hit(hashes[i])), -1)
            for i in marks:
                self._store(hashes[i])
        read = tokens_of(chars[hit]) if hit >= 0 else 0
        written = tokens_of(chars[last]) - read if hit < last else 0
        return read, written

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


def cumulative_chars(segments: list[Segment]) -> list[int]:
    total, out = 0, []
    for seg in segments:
        total += len(seg.text)
        out.append(total)
    return out
