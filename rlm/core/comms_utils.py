"""The reference's `rlm.core.comms_utils`; the code is `rlm.transport.comms`."""

from rlm.transport.comms import (
    LMRequest,
    LMResponse,
    handler_endpoint,
    send_lm_request,
    send_lm_request_batched,
    socket_recv,
    socket_request,
    socket_send,
)

__all__ = [
    "LMRequest",
    "LMResponse",
    "handler_endpoint",
    "send_lm_request",
    "send_lm_request_batched",
    "socket_recv",
    "socket_request",
    "socket_send",
]
