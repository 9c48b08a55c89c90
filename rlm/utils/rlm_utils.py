"""The reference's `rlm.utils.rlm_utils`: dropping secrets from keyword arguments before logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlm.logger.redact import is_sensitive_key


def filter_sensitive_keys(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` without the entries whose key names a secret (API keys, tokens, passwords...).

    Wider than the reference's test (a key naming both "api" and "key"): `token`, `secret`,
    `password` and `authorization` keys are dropped too, so no credential reaches a trajectory.
    """
    return {k: v for k, v in kwargs.items() if not is_sensitive_key(str(k))}
