"""Errors at the client boundary: bad configuration (keys, arguments) and provider failures.

Provider SDK failures become `ProviderError` the same way for every SDK. The SDKs differ in
class names but agree on the facts we keep: an HTTP status, a body, the response headers (for
Retry-After) and whether the request got no answer at all (connection reset, timeout). These
helpers take those facts; each client extracts them from its SDK's exception classes.
"""

from __future__ import annotations

import email.utils
import importlib.util
import inspect
import os
import time
from collections.abc import Mapping
from typing import Any

from rlm.errors import ConfigurationError, ContextWindowExceededError, ProviderError

RETRYABLE_STATUSES = frozenset({408, 409, 429})

_CONTEXT_PHRASES = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",
)

# Transport failures (no HTTP answer) raised by the HTTP stacks under the SDKs, by class name
# and the top-level module that defines it; matched along the MRO so subclasses count too.
_TRANSPORT_CLASSES = {
    ("httpx", "TransportError"),
    ("httpx", "TimeoutException"),
    ("httpx2", "TransportError"),
    ("httpx2", "TimeoutException"),
    ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ClientPayloadError"),
    ("aiohttp", "ServerTimeoutError"),
}


def resolve_api_key(
    provider: str, api_key: str | None, *env_vars: str | None, default: str | None = None
) -> str | None:
    """The explicit key, else the first set env var, else `default`; none at all is an error.

    Checked when the client is built, so a missing key fails before any request is made.
    With no env var named (local servers, LiteLLM), a missing key is allowed and None returned.
    """
    if api_key:
        return api_key
    names = [name for name in env_vars if name]
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    if default is not None or not names:
        return default
    raise ConfigurationError(
        f"{provider}: no API key. Pass api_key=... or set the {' or '.join(names)} "
        "environment variable."
    )


def check_options(provider: str, options: Mapping[str, Any]) -> None:
    """Reject keyword arguments `BaseLM` does not take, naming the ones it does."""
    from rlm.clients.base import BaseLM  # here: base imports nothing of ours, keep it that way

    allowed = set(inspect.signature(BaseLM.__init__).parameters) - {"self", "model_name"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{provider}: unknown argument(s) {', '.join(unknown)}; "
            f"the client options are: {', '.join(sorted(allowed))}"
        )


def wants_direct_http(
    provider: str, asked: bool | None, client_kwargs: Mapping[str, Any], *, extra: str
) -> bool:
    """Whether a Stainless-SDK client sends through `rlm.clients._direct_http`.

    `asked` None means "when possible": aiohttp is installed and `client_kwargs` give the SDK
    neither an `http_client` nor a callable (a token provider must run for every request).
    Asking for it explicitly where it cannot honour `client_kwargs` is an error.
    """
    per_request = sorted(
        name for name, value in client_kwargs.items() if name == "http_client" or callable(value)
    )
    if asked and per_request:
        raise ConfigurationError(
            f"{provider}: direct_http=True cannot honour client_kwargs {', '.join(per_request)}: "
            "the SDK client must send every request itself"
        )
    if asked:
        from rlm._optional import require

        require("aiohttp", extra=extra)
        return True
    return asked is None and not per_request and importlib.util.find_spec("aiohttp") is not None


def is_retryable_status(status: int | None) -> bool:
    """429, 408, 409 and every 5xx are worth another try; other statuses are not."""
    return status is not None and (status in RETRYABLE_STATUSES or status >= 500)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    raw_ms = getter("retry-after-ms") or getter("Retry-After-Ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except (TypeError, ValueError):
            pass
    raw = getter("retry-after") or getter("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def body_message(body: Any, fallback: str) -> str:
    """The provider's own error message from a decoded body, else `fallback`."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
        if isinstance(error, str):
            return error
    if isinstance(body, str) and body.strip():
        return body
    return fallback


def body_code(body: Any) -> str | None:
    """An error code such as OpenAI's `context_length_exceeded`, wherever the body keeps it."""
    if not isinstance(body, Mapping):
        return None
    for holder in (body, body.get("error")):
        if isinstance(holder, Mapping):
            code = holder.get("code")
            if isinstance(code, str):
                return code
    return None


def mentions_context_overflow(*texts: str | None) -> bool:
    """True when a message or code says the prompt is over the model's context window."""
    for text in texts:
        if text:
            lowered = text.lower()
            if any(phrase in lowered for phrase in _CONTEXT_PHRASES):
                return True
    return False


def status_error(
    provider: str,
    status: int | None,
    message: str,
    *,
    body: Any = None,
    headers: Any = None,
    context_overflow: bool = False,
) -> ProviderError:
    """A `ProviderError` for an HTTP error answer, keeping status, body and Retry-After."""
    retryable = is_retryable_status(status)
    retry_after = parse_retry_after(headers) if retryable else None
    if context_overflow:
        return ContextWindowExceededError(
            f"context window exceeded: {message}",
            provider=provider,
            status_code=status,
            body=body,
            retryable=False,
        )
    return ProviderError(
        message,
        provider=provider,
        status_code=status,
        body=body,
        retryable=retryable,
        retry_after=retry_after,
    )


def transport_error(provider: str, exc: BaseException) -> ProviderError:
    """A retryable `ProviderError` for a request that got no HTTP answer."""
    detail = str(exc) or type(exc).__name__
    return ProviderError(
        f"connection failed ({type(exc).__name__}): {detail}", provider=provider, retryable=True
    )


def is_transport_failure(exc: BaseException) -> bool:
    """A timeout, reset or refused connection from the HTTP stack, not an HTTP error answer."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    for cls in type(exc).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if (root, cls.__name__) in _TRANSPORT_CLASSES:
            return True
    return False


def http_status_error(
    provider: str, status: int | None, body: Any, *, headers: Any, fallback: str
) -> ProviderError:
    """A `ProviderError` for an HTTP error answer, from its status, decoded body and headers.

    The one place that reads an error answer, whether an SDK raised it or rlm's direct HTTP
    path received it: the provider's own message (else `fallback`), context-window overflow by
    code or message, Retry-After.
    """
    message = body_message(body, fallback)
    code = body_code(body)
    overflow = status in (400, 413, 422) and mentions_context_overflow(code, message)
    return status_error(
        provider, status, message, body=body, headers=headers, context_overflow=overflow
    )


def sdk_error(
    provider: str,
    exc: BaseException,
    *,
    status_error_cls: type[BaseException],
    connection_error_cls: type[BaseException],
    base_cls: type[BaseException],
) -> ProviderError | None:
    """Translate an exception of a Stainless-style SDK (openai, anthropic, Portkey's openai).

    Those SDKs share one shape: a status error with `status_code`, `body` and `response`, a
    connection error (timeouts included) and a common base class. Returns None for exceptions
    that are not the SDK's.
    """
    if isinstance(exc, connection_error_cls):
        return transport_error(provider, exc)
    if isinstance(exc, status_error_cls):
        response = getattr(exc, "response", None)
        return http_status_error(
            provider,
            getattr(exc, "status_code", None),
            getattr(exc, "body", None),
            headers=getattr(response, "headers", None),
            fallback=getattr(exc, "message", None) or str(exc),
        )
    if isinstance(exc, base_cls):
        return ProviderError(f"{type(exc).__name__}: {exc}", provider=provider)
    return None


def openai_style_error(provider: str, exc: BaseException, sdk: Any) -> ProviderError | None:
    """`sdk_error` for the `openai` module or a vendored copy of it (Portkey's)."""
    return sdk_error(
        provider,
        exc,
        status_error_cls=sdk.APIStatusError,
        connection_error_cls=sdk.APIConnectionError,
        base_cls=sdk.OpenAIError,
    )
