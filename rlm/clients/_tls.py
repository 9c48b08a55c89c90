"""One verifying SSL context for every client in the process, and the keep-alive both HTTP
paths use. Kept apart from `_http_pool` so the direct path imports no httpx until it needs TLS."""

from __future__ import annotations

import ssl
import threading

KEEPALIVE_EXPIRY = 5.0

_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for every client in the process.

    Building one reads the whole CA bundle (~0.1 s or more), which the SDKs otherwise do for
    every client object. Made on first use with httpx's defaults (certifi, or SSL_CERT_FILE /
    SSL_CERT_DIR as set at that moment); SSL contexts are safe to share between connections.
    httpx is imported here, not at module level: a client that speaks plain HTTP never needs it.
    """
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            import httpx

            _ssl_context = httpx.create_ssl_context()
        return _ssl_context
