"""Secret scrubbing for everything `rlm` writes to a log file or a console.

Three nets, because any one of them alone leaks: values under a sensitive key name (an
`api_key` in backend kwargs, an `Authorization` header), strings that look like a credential
(`sk-...`, `Bearer ...`), and the exact values of secret-looking environment variables (a key
with no recognisable shape that code printed from `os.environ`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Key names whose values are secrets, compared after lower-casing and turning "-" into "_".
_SENSITIVE_KEY = re.compile(
    r"(^|_)(api_?key|apikey|token|access_token|refresh_token|auth|authorization|password|passwd"
    r"|secret|client_secret|private_key|credentials?|cookie|session_key)($|_)"
)
_SENSITIVE_KEY_EXACT = frozenset({"x_api_key", "proxy_authorization", "set_cookie", "bearer"})
# A key name only ends with such a word ("max_tokens" is not a secret, "auth_token" is).
_NOT_SENSITIVE = frozenset(
    {
        "max_tokens",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "total_tokens",
        "total_input_tokens",
        "total_output_tokens",
        "total_cached_tokens",
        "prompt_tokens",
        "completion_tokens",
        "tokens",
    }
)

# Values that look like credentials whatever key holds them.
_VALUE_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"),  # OpenAI, Anthropic (sk-ant-...), OpenRouter
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)\bBasic\s+[A-Za-z0-9+/=]{12,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google API keys
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),  # Slack tokens
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face tokens
    re.compile(r"\be2b_[A-Za-z0-9]{20,}"),  # E2B keys
    re.compile(r"\bpk-[A-Za-z0-9_\-]{16,}"),  # Portkey and similar public/secret pairs
]
# Environment variable names whose values are scrubbed verbatim: a whole word of the name says
# it holds a secret (OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, BASIC_AUTH), not a
# substring of one (GIT_AUTHOR_EMAIL holds an address that answers may rightly contain).
_SECRET_ENV = re.compile(
    r"(?i)(^|_)(API_?KEY|KEY|KEYS|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?|AUTH|PAT)($|_)"
)
_MIN_SECRET_LEN = 8
_MIN_ENV_SECRET_LEN = 12


def is_sensitive_key(name: str) -> bool:
    """True when a mapping key's value must never be logged."""
    key = name.lower().replace("-", "_").strip()
    if key in _NOT_SENSITIVE or key.endswith("_tokens"):
        return False
    return key in _SENSITIVE_KEY_EXACT or _SENSITIVE_KEY.search(key) is not None


def _looks_like_secret(value: str) -> bool:
    """Long, one word, not a path, and with digits or mixed case: a key, not a setting."""
    return (
        len(value) >= _MIN_ENV_SECRET_LEN
        and not any(c.isspace() for c in value)
        and not value.startswith(("/", "~", "."))
        and (
            any(c.isdigit() for c in value)
            or (any(c.islower() for c in value) and any(c.isupper() for c in value))
        )
    )


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names say they hold a secret.

    Values that look like ordinary settings (short words, paths) are left alone, so a variable
    such as AUTH_MODE=disabled does not blank out every "disabled" in a log.
    """
    source = os.environ if environ is None else environ
    return [
        value
        for name, value in source.items()
        if _SECRET_ENV.search(name) and _looks_like_secret(value)
    ]


_registry_lock = threading.Lock()
_registered: tuple[str, ...] = ()  # process-wide secrets every Redactor scrubs


def register_secret(value: Any) -> None:
    """Scrub this exact value in every Redactor of the process, present and future.

    For keys handed over in code rather than the environment (an `api_key` in
    `backend_kwargs`): they have no recognisable shape, and a model, a provider error or
    sandbox output may repeat them.
    """
    global _registered
    if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
        return
    with _registry_lock:
        if value not in _registered:
            _registered = (*_registered, value)


def register_sensitive_values(data: Any, depth: int = 0) -> None:
    """`register_secret` every string held under a sensitive key name in nested mappings."""
    if depth > 4 or not isinstance(data, Mapping):
        return
    for key, value in data.items():
        if isinstance(value, str) and is_sensitive_key(str(key)):
            register_secret(value)
        else:
            register_sensitive_values(value, depth + 1)


class Redactor:
    """Scrubs secrets from strings and from nested JSON-like data (returns copies)."""

    def __init__(self, secrets: Iterable[str] = (), *, include_env: bool = True) -> None:
        values = {s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET_LEN}
        if include_env:
            values.update(env_secrets())
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(values, key=len, reverse=True)
        self._merged: tuple[tuple[str, ...], list[str]] = ((), self._secrets)

    def add_secret(self, value: str) -> None:
        """Scrub this exact value from now on (a key that was passed in code, not via env)."""
        if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN and value not in self._secrets:
            self._secrets.append(value)
            self._secrets.sort(key=len, reverse=True)
            self._merged = ((), self._secrets)

    def _all_secrets(self) -> list[str]:
        """Own secrets and the process-wide registry, longest first (re-merged on change)."""
        registered = _registered
        seen, merged = self._merged
        if seen is not registered:
            merged = sorted({*self._secrets, *registered}, key=len, reverse=True)
            self._merged = (registered, merged)
        return merged

    def text(self, value: str) -> str:
        """One string with every known secret and credential-shaped substring replaced."""
        for secret in self._all_secrets():
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern in _VALUE_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value

    def known(self, value: str) -> str:
        """Only the exact secret values this redactor knows (provider keys from the environment,
        keys passed in code), never secret-looking shapes: for the user's own data (an answer,
        a context), which must come out as it went in unless it holds one of those values."""
        for secret in self._all_secrets():
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value: Any) -> Any:
        """A copy of JSON-like data with sensitive keys' values and secret strings redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = str(key)
                if is_sensitive_key(name) and item not in (None, "", {}, []):
                    out[self.text(name)] = REDACTED
                else:
                    out[self.text(name)] = self.data(item)
            return out
        if isinstance(value, (list, tuple)):
            return [self.data(item) for item in value]
        return value


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """A process-wide redactor built from the environment on first use."""
    global _default
    if _default is None:
        _default = Redactor()
    return _default


def redact(value: Any) -> Any:
    """Redact JSON-like data or a string with the default redactor."""
    return default_redactor().data(value)
