"""The URL and headers a Stainless-generated SDK (openai) sends, computed without importing it.

Why: importing `openai` costs 0.3-0.8 s of CPU (hundreds of pydantic types), paid by the first
completion of every process, while rlm's direct HTTP path (`rlm.clients._direct_http`) only
needs the URL and the headers the SDK would put on a request. For the settings modelled here
(a key, a base URL, default headers, a timeout, and what the SDK reads from the environment for
them) this module builds those, header for header: tests/test_direct_http.py puts both on the
wire side by side. A setting outside the model (see `OpenAIClient._static_route`) makes the
caller learn the route from the SDK itself, as before.

Stdlib only; the SDK's version comes from its installed metadata.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import sys
import urllib.parse
from collections.abc import Mapping


@functools.cache
def installed_version(package: str) -> str | None:
    """The installed distribution's version (what the SDK reports as its own), None if absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _os_name() -> str:
    """The SDK's `X-Stainless-OS` value."""
    try:
        system = platform.system().lower()
        name = platform.platform().lower()
    except Exception:
        return "Unknown"
    if "iphone" in name or "ipad" in name:
        return "iOS"
    named = {"darwin": "MacOS", "windows": "Windows"}
    if system in named:
        return named[system]
    if "android" in name:
        return "Android"
    if system in ("freebsd", "openbsd"):
        return {"freebsd": "FreeBSD", "openbsd": "OpenBSD"}[system]
    if system == "linux":
        try:
            distro = platform.freedesktop_os_release().get("ID", "").lower()
        except OSError:
            distro = ""
        return {"freebsd": "FreeBSD", "openbsd": "OpenBSD"}.get(distro, "Linux")
    return f"Other:{name}" if name else "Unknown"


def _arch() -> str:
    """The SDK's `X-Stainless-Arch` value."""
    try:
        machine = platform.machine().lower()
    except Exception:
        return "unknown"
    known = {"arm64": "arm64", "aarch64": "arm64", "arm": "arm", "x86_64": "x64"}
    if machine in known:
        return known[machine]
    if sys.maxsize <= 2**32:
        return "x32"
    return f"other:{machine}" if machine else "unknown"


@functools.cache
def _platform_headers(version: str) -> tuple[tuple[str, str], ...]:
    return (
        ("X-Stainless-Lang", "python"),
        ("X-Stainless-Package-Version", version),
        ("X-Stainless-OS", _os_name()),
        ("X-Stainless-Arch", _arch()),
        ("X-Stainless-Runtime", platform.python_implementation()),
        ("X-Stainless-Runtime-Version", platform.python_version()),
    )


def stainless_headers(
    client_class: str,
    package: str,
    *,
    auth: Mapping[str, str],
    sdk_headers: Mapping[str, str],
    custom: Mapping[str, str],
    timeout: float | None,
) -> dict[str, str] | None:
    """The headers (lower-case names) of an async Stainless client's POST with no retry taken.

    Merged as the SDK merges them, later winning whatever the case: `auth`, the common
    defaults, the SDK's own (`sdk_headers`), the user's `custom` ones; then the retry count and
    read timeout. None when `package` is not installed.
    """
    version = installed_version(package)
    if version is None:
        return None
    merged: dict[str, str] = {}
    common = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": f"{client_class}/Python {version}",
        **dict(_platform_headers(version)),
        "X-Stainless-Async": "async:asyncio",  # rlm's loop is an asyncio loop
    }
    for layer in (auth, common, sdk_headers, custom):
        for name, value in layer.items():
            merged[name.lower()] = value
    merged["x-stainless-retry-count"] = "0"
    if timeout is not None:
        merged["x-stainless-read-timeout"] = str(timeout)
    return merged


_UNSAFE_URL_CHARS = frozenset(' \t\r\n"<>\\^`{|}')


def join_url(base: str, path: str) -> str | None:
    """`path` under `base` as the SDK joins them (one slash between), for a plain http(s) base.

    None for a base the SDK would treat in ways not modelled here (another scheme, a query,
    credentials in the URL, characters it would percent-encode).
    """
    if not base.isascii() or _UNSAFE_URL_CHARS.intersection(base):
        return None
    parts = urllib.parse.urlsplit(base)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return None
    root = urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))
    return (root if root.endswith("/") else root + "/") + path.lstrip("/")
