"""The one exception tree of `rlm`.

Everything `rlm` raises on purpose derives from `RLMError`, so callers can catch one class.
This module imports only the standard library: it is shipped into sandboxes together with
`rlm.runtime`, where the same classes describe protocol failures.
"""

from __future__ import annotations

from typing import Any


class RLMError(Exception):
    """Base class of every error raised by `rlm`."""


class ConfigurationError(RLMError, ValueError):
    """Bad arguments: unknown backend or environment, missing key, missing extra, bad limit."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional SDK is not installed; the message names the `pip install` to run."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"The optional dependency {package!r} is not installed. Run: pip install 'rlm[{extra}]'"
        )


class ProviderError(RLMError):
    """A model provider failed. Keeps the HTTP status and body the provider returned."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        body: Any = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.retry_after = retry_after
        self.status_code = status_code
        self.body = body
        self.retryable = retryable
        prefix = f"[{provider}] " if provider else ""
        status = f"HTTP {status_code}: " if status_code is not None else ""
        super().__init__(f"{prefix}{status}{message}")


class ContextWindowExceededError(ProviderError):
    """The prompt is longer than the model's context window."""


class SandboxError(RLMError):
    """The environment failed: it could not start, load the context, or it died."""


class ContextLoadError(SandboxError):
    """The prompt could not be loaded into the environment as `context`."""


class ProtocolError(RLMError):
    """A malformed, oversized, unauthenticated or out-of-order frame on the LMHandler channel."""


class FrameTooLargeError(ProtocolError):
    """A frame's declared length is over the cap; refused before allocating."""


class IncompleteFrameError(ProtocolError):
    """The peer closed the connection in the middle of a frame."""

    def __init__(self, expected: int, received: int) -> None:
        self.expected = expected
        self.received = received
        super().__init__(f"connection closed mid-frame: expected {expected} bytes, got {received}")


class AuthenticationError(ProtocolError):
    """The hello frame carried no token or the wrong one."""


class RemoteError(RLMError):
    """An error the LMHandler returned for one request, carried back to the caller with its type."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(f"{error_type}: {message}")


class LimitExceededError(RLMError):
    """A host-owned limit tripped (tokens, cost, time, sub-calls, depth, errors, iterations)."""

    stop_reason = "limit"

    def __init__(self, message: str, *, partial_answer: str | None = None) -> None:
        self.partial_answer = partial_answer
        super().__init__(message)


class TimeoutExceededError(LimitExceededError):
    stop_reason = "max_timeout"


class TokenLimitExceededError(LimitExceededError):
    stop_reason = "max_tokens"


class BudgetExceededError(LimitExceededError):
    stop_reason = "max_budget"


class SubcallLimitExceededError(LimitExceededError):
    stop_reason = "max_subcalls"


class ErrorThresholdExceededError(LimitExceededError):
    stop_reason = "max_errors"


class CancellationError(RLMError):
    """The run was cancelled (Ctrl-C or task cancellation); carries the best answer so far."""

    def __init__(
        self, message: str = "run cancelled", *, partial_answer: str | None = None
    ) -> None:
        self.partial_answer = partial_answer
        super().__init__(message)


def error_type_name(exc: BaseException) -> str:
    """The name sent on the wire for an exception (its class name)."""
    return type(exc).__name__
