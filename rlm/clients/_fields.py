"""Reading a provider's answer whether an SDK parsed it into objects or it is still JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def field(obj: Any, name: str) -> Any:
    """`obj[name]` of a mapping, `obj.name` of an object; None when absent or `obj` is None."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def count(value: Any) -> int:
    """A token count: a number as an int, anything else (None, a bool, a string) as 0."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
