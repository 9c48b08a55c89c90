"""JSON data: what crosses every boundary of rlm, checked, copied and converted in one place.

A context, a history, a tool's arguments, a child's context and a final value all travel as JSON
(AGENTS.md property 3), in-process or to a sandbox. Every place that walks such data uses this
module, so every environment accepts and refuses the same values:

- `check_json(value, where, error=...)`: raise unless `value` is JSON data: str, int, float
  (finite), bool, None, and lists, tuples and dicts with str keys of those; no container
  inside itself; at most `MAX_DEPTH` containers deep. The message names the place
  (``context[3]['pages']``).
- `json_copy(...)`: the same check, and a deep copy made in the same walk (tuples become lists,
  subclasses of str/int/float their plain type), so code cannot mutate the caller's object.
- `to_jsonable(value)`: never fails; whatever is not JSON data becomes text (a set, an object,
  NaN, a cycle), and nesting past `MAX_DEPTH` becomes "...".
- `check_json_cost` / `strict_loads`: the parsing side, bounded before anything is parsed.

The walkers are iterative: a value nested `MAX_DEPTH` deep costs no Python stack, so the limit
is the same wherever the walk starts (a cell's helper, the host's loader, a deep call stack).

Standard library only (plus `rlm.errors`): this module is shipped into sandboxes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from rlm.errors import ProtocolError

MAX_DEPTH = 500  # containers inside containers, everywhere: a deeper value is refused
_SCALARS = frozenset({str, int, bool, type(None)})  # exact types a copy may share as they are
_CHECK, _COPY, _CONVERT = 0, 1, 2

Describe = Callable[[Any], Any]


def safe_str(value: Any) -> str:
    """str(value), or a placeholder when the object's own __str__ fails."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def check_json(value: Any, where: str = "value", *, error: type[Exception] = TypeError) -> None:
    """Raise `error` unless `value` is JSON data (see the module docstring)."""
    _walk(value, where, _CHECK, error, safe_str)


def json_copy(value: Any, where: str = "value", *, error: type[Exception] = TypeError) -> Any:
    """A deep copy of `value` as plain JSON data; `error` (as `check_json`) if it is not."""
    return _walk(value, where, _COPY, error, safe_str)


def to_jsonable(value: Any, describe: Describe = safe_str) -> Any:
    """A JSON-compatible copy: JSON data kept (tuples as lists), dict keys made str, anything
    else replaced by `describe(item)` (by default its str), a non-finite float by its text,
    a container met again inside itself by `describe(container)`, nesting past `MAX_DEPTH`
    by "..."."""
    return _walk(value, "value", _CONVERT, TypeError, describe)


def _where(where: str, trail: Any) -> str:
    keys: list[Any] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    keys.reverse()
    if len(keys) > 8:  # a place 500 levels down is named by its ends
        return f"{_where(where, _trail(keys[:4]))}...{_where('', _trail(keys[-4:]))}"
    return where + "".join(f"[{key!r}]" for key in keys)


def _trail(keys: list[Any]) -> Any:
    trail: Any = None
    for key in keys:
        trail = (trail, key)
    return trail


def _walk(value: Any, where: str, mode: int, error: type[Exception], describe: Describe) -> Any:
    """The one walker behind check, copy and convert (explicit stack, no recursion).

    A stack entry is (item, level, trail, target, slot): the item's copy goes to
    `target[slot]`; `trail` = (parent's trail, key) names the place only when an error needs
    it. An entry with level -1 leaves a container: `on_path` holds the ids of the containers
    above the current item, so meeting one again is a cycle, while a container shared by two
    branches is not. Children that are plain scalars (finite floats too) get no entry.
    """
    convert = mode == _CONVERT
    out: list[Any] = [None]
    on_path: set[int] = set()
    stack: list[tuple[Any, int, Any, Any, Any]] = [(value, 0, None, out, 0)]
    push = stack.append
    isfinite = math.isfinite
    while stack:
        item, level, trail, target, slot = stack.pop()
        if level < 0:
            on_path.discard(item)
            continue
        copy: Any = None
        if type(item) in _SCALARS:
            result = item
        elif isinstance(item, (str, int)):  # subclasses (an IntEnum, a str subclass)
            result = str(item) if isinstance(item, str) else int(item)
        elif isinstance(item, float):
            if math.isfinite(item):
                result = float(item)
            elif convert:
                result = str(item)
            else:
                raise error(f"{_where(where, trail)} is {item}, which JSON cannot carry")
        elif not isinstance(item, (list, tuple, dict)):
            if not convert:
                raise error(
                    f"{_where(where, trail)} is a {type(item).__name__}, which is not JSON "
                    "data; use str, int, float, bool, None, or lists/dicts of those (convert "
                    "it first, e.g. list(...) or str(...))"
                )
            result = describe(item)
        elif id(item) in on_path:
            if not convert:
                raise error(f"{_where(where, trail)} contains itself (a reference cycle)")
            result = describe(item)
        elif level >= MAX_DEPTH:
            if not convert:
                raise error(f"{_where(where, trail)} is nested more than {MAX_DEPTH} levels deep")
            result = "..."
        else:  # a container: its children go on the stack, first child on top
            on_path.add(id(item))
            push((id(item), -1, None, None, None))
            level += 1
            if isinstance(item, dict):
                if not all(type(key) is str for key in item):
                    item = _str_keys(item, mode, _where(where, trail), error)
                if mode != _CHECK:
                    copy = dict.fromkeys(item)  # the copy keeps the original's key order
                for key, child in reversed(item.items()):
                    kind = type(child)
                    if kind in _SCALARS or (kind is float and isfinite(child)):
                        if copy is not None:
                            copy[key] = child
                    else:
                        push((child, level, (trail, key), copy, key))
            else:
                if mode != _CHECK:
                    copy = list(item)  # scalars in place already; containers replaced below
                for i in range(len(item) - 1, -1, -1):
                    child = item[i]
                    kind = type(child)
                    if kind not in _SCALARS and not (kind is float and isfinite(child)):
                        push((child, level, (trail, i), copy, i))
            result = copy
        if mode != _CHECK:
            target[slot] = result
    return out[0]


def _str_keys(item: dict[Any, Any], mode: int, where: str, error: type[Exception]) -> Any:
    """`item` with str keys (str subclasses made plain), or an error for a key of another
    type; converting, such a key becomes its str."""
    pairs = {}
    for key, child in item.items():
        if not isinstance(key, str):
            if mode != _CONVERT:
                raise error(f"{where} has the non-str key {key!r}; JSON object keys must be str")
            key = safe_str(key)
        pairs[str(key)] = child
    return pairs


# ---------------------------------------------------------------------------- parsing
# What parsing one message may cost, counted before it is parsed. A JSON value costs its
# reader far more than its bytes: `[],` is 3 bytes and a 56-byte list, so a 40 MB text of
# them would take a gigabyte. Every value but the first in a container follows a "," (or a
# ":" in an object), and every container opens with "[" or "{" (weighted twice: the
# container and its first value), so this count bounds the number of values parsed.
MAX_JSON_VALUES = 2_000_000


def json_value_bound(text: str | bytes) -> int:
    """An upper bound on the number of values parsing `text` would create (see above)."""
    if isinstance(text, str):
        return 2 * (text.count("[") + text.count("{")) + text.count(",") + text.count(":") + 1
    return 2 * (text.count(b"[") + text.count(b"{")) + text.count(b",") + text.count(b":") + 1


def check_json_cost(text: str | bytes, max_values: int = MAX_JSON_VALUES) -> None:
    """ProtocolError if parsing `text` could create more than `max_values` values, before
    anything is parsed (brackets and commas inside strings count too: the bound is safe)."""
    if len(text) // 2 < max_values:  # at least 2 bytes per counted value: fast path
        return
    bound = json_value_bound(text)
    if bound > max_values:
        raise ProtocolError(
            f"message holds up to {bound} JSON values, over the cap of {max_values} "
            "(parsing it would cost far more memory than its size)"
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(text: str, what: str = "message") -> Any:
    """Strict JSON (NaN/Infinity refused); deep nesting and over-long integers are a
    `ProtocolError`, never a `RecursionError`/`ValueError`. Callers bound the cost first."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, the int-digits limit
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON text of `value`; a str with lone surrogates (which UTF-8 cannot
    hold) travels as \\u escapes instead, in ASCII. NaN/Infinity are refused (ValueError)."""
    separators = (",", ":")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=separators)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=False, separators=separators).encode("ascii")
