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
    """A malformed, oversized, unauthenticated or out-of-order frame or request on a channel."""


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
    """An error the LM service returned for one request, carried back with its type."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(f"{error_type}: {message}")


class LimitExceededError(RLMError):
    """A host-owned limit tripped (tokens, cost, time, sub-calls, errors).

    Raised out of `RLM.completion()` (unless `RLM(on_limit="return")`), carrying what the run
    had when it stopped: `partial_answer` (the best answer text so far, or None) and
    `completion` (the `RLMChatCompletion` so far: usage, `stop_reason`, trajectory), so a
    caller never takes a partial answer for a whole one without knowing.
    """

    stop_reason = "limit"
    # The default message, formatted with the limit's figures (the subclass's attributes).
    template = "{name}"

    def __init__(
        self,
        message: str | None = None,
        *,
        partial_answer: str | None = None,
        completion: Any = None,
        **figures: Any,
    ) -> None:
        self._init_limit(message, partial_answer, completion, **figures)

    def _init_limit(
        self, message: str | None, partial_answer: str | None, completion: Any, **figures: Any
    ) -> None:
        """The one init of every limit error: `figures` (elapsed/timeout, spent/budget, ...)
        become attributes and fill `template` when no `message` is given."""
        self.__dict__.update(figures)
        self.partial_answer = partial_answer
        self.completion = completion
        RLMError.__init__(
            self, message or self.template.format(name=type(self).__name__, **figures)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message and attributes, not by calling __init__ with the message
        # (which would take it for the first figure): a limit error survives pickling (Ray,
        # multiprocessing).
        return (_rebuild_error, (type(self), self.args, self.__dict__))


class TimeoutExceededError(LimitExceededError):
    """`max_timeout` seconds of wall time passed; `elapsed` and `timeout` in seconds."""

    stop_reason = "max_timeout"
    elapsed: float
    timeout: float
    template = "Timeout exceeded: {elapsed:.1f}s of {timeout:.1f}s limit"

    def __init__(
        self,
        elapsed: float = 0.0,
        timeout: float = 0.0,
        partial_answer: str | None = None,
        message: str | None = None,
        *,
        completion: Any = None,
    ) -> None:
        self._init_limit(message, partial_answer, completion, elapsed=elapsed, timeout=timeout)


class TokenLimitExceededError(LimitExceededError):
    """`max_tokens` (input + output over the whole recursion tree) was reached."""

    stop_reason = "max_tokens"
    tokens_used: int
    token_limit: int
    template = "Token limit exceeded: {tokens_used:,} of {token_limit:,} tokens"

    def __init__(
        self,
        tokens_used: int = 0,
        token_limit: int = 0,
        partial_answer: str | None = None,
        message: str | None = None,
        *,
        completion: Any = None,
    ) -> None:
        self._init_limit(
            message, partial_answer, completion, tokens_used=tokens_used, token_limit=token_limit
        )


class BudgetExceededError(LimitExceededError):
    """`max_budget` (USD over the whole recursion tree) was reached; `spent` and `budget`."""

    stop_reason = "max_budget"
    spent: float
    budget: float
    template = "Budget exceeded: spent ${spent:.6f} of ${budget:.6f} budget"

    def __init__(
        self,
        spent: float = 0.0,
        budget: float = 0.0,
        message: str | None = None,
        *,
        partial_answer: str | None = None,
        completion: Any = None,
    ) -> None:
        self._init_limit(message, partial_answer, completion, spent=spent, budget=budget)


class SubcallLimitExceededError(LimitExceededError):
    """`max_subcalls` (sub-calls over the whole recursion tree) was reached."""

    stop_reason = "max_subcalls"
    subcalls: int
    limit: int
    template = "Sub-call limit exceeded: {subcalls} of {limit} sub-calls"

    def __init__(
        self,
        subcalls: int = 0,
        limit: int = 0,
        partial_answer: str | None = None,
        message: str | None = None,
        *,
        completion: Any = None,
    ) -> None:
        self._init_limit(message, partial_answer, completion, subcalls=subcalls, limit=limit)


class ErrorThresholdExceededError(LimitExceededError):
    """`max_errors` consecutive turns whose code failed; `last_error` is the latest stderr."""

    stop_reason = "max_errors"
    error_count: int
    threshold: int
    last_error: str | None
    template = "Error threshold exceeded: {error_count} consecutive errors (limit: {threshold})"

    def __init__(
        self,
        error_count: int = 0,
        threshold: int = 0,
        last_error: str | None = None,
        partial_answer: str | None = None,
        message: str | None = None,
        *,
        completion: Any = None,
    ) -> None:
        self._init_limit(
            message,
            partial_answer,
            completion,
            error_count=error_count,
            threshold=threshold,
            last_error=last_error,
        )


class CancellationError(RLMError):
    """The run was cancelled (Ctrl-C); carries the best answer and the completion so far."""

    stop_reason = "cancelled"

    def __init__(
        self,
        partial_answer: str | None = None,
        message: str | None = None,
        *,
        completion: Any = None,
    ) -> None:
        self.partial_answer = partial_answer
        self.completion = completion
        super().__init__(message or "Execution cancelled by user")


def _rebuild_error(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def error_type_name(exc: BaseException) -> str:
    """The name sent on the wire for an exception (its class name)."""
    return type(exc).__name__
