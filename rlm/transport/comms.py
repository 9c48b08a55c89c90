"""Request/response types and send helpers of the reference's `rlm.core.comms_utils`.

Same framing as the reference (a 4-byte big-endian length, then a UTF-8 JSON object; our
`rlm.runtime.protocol`), but our LMHandler authenticates every connection with a session
token. So `send_lm_request(address, ...)` from this process looks up the handler started at
`address` (`rlm.transport.inprocess.AddressLink`), takes a session from it, and hands the request
to that handler's service in this process: its real request path, no unauthenticated port.
A handler in another process is out of reach this way (it has no token to give): connect with
`rlm.runtime.protocol.Connection` and a `HandlerEndpoint` instead.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from rlm.core.types import ModelUsageSummary, Prompt, RLMChatCompletion, Usage, UsageSummary
from rlm.environments.base import HandlerEndpoint
from rlm.errors import RLMError
from rlm.runtime.protocol import recv_frame, send_frame
from rlm.transport.inprocess import AddressLink

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


@dataclass
class LMRequest:
    """One request to an LMHandler: a prompt, or `prompts` for a batch."""

    prompt: Prompt | None = None
    prompts: list[Prompt] | None = None
    model: str | None = None
    depth: int = 0

    @property
    def is_batched(self) -> bool:
        return self.prompts is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"depth": self.depth}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if self.prompts is not None:
            data["prompts"] = self.prompts
        if self.model is not None:
            data["model"] = self.model
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMRequest:
        return cls(
            prompt=data.get("prompt"),
            prompts=data.get("prompts"),
            model=data.get("model"),
            depth=int(data.get("depth", 0)),
        )


@dataclass
class LMResponse:
    """The reference's reply: an error string, or one completion, or one per batch item."""

    error: str | None = None
    chat_completion: RLMChatCompletion | None = None
    chat_completions: list[RLMChatCompletion] | None = None

    @property
    def success(self) -> bool:
        return self.error is None

    @property
    def is_batched(self) -> bool:
        return self.chat_completions is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "chat_completion": None
            if self.chat_completion is None
            else self.chat_completion.to_dict(),
            "chat_completions": None
            if self.chat_completions is None
            else [c.to_dict() for c in self.chat_completions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMResponse:
        one = data.get("chat_completion")
        many = data.get("chat_completions")
        return cls(
            error=data.get("error"),
            chat_completion=None if one is None else RLMChatCompletion.from_dict(one),
            chat_completions=None
            if many is None
            else [RLMChatCompletion.from_dict(c) for c in many],
        )

    @classmethod
    def success_response(cls, chat_completion: RLMChatCompletion) -> LMResponse:
        return cls(chat_completion=chat_completion)

    @classmethod
    def batched_success_response(cls, chat_completions: list[RLMChatCompletion]) -> LMResponse:
        return cls(chat_completions=chat_completions)

    @classmethod
    def error_response(cls, error: str) -> LMResponse:
        return cls(error=error)


# ------------------------------------------------------------------------------ raw frames


def socket_send(sock: socket.socket, data: dict[str, Any]) -> None:
    """Send one length-prefixed JSON frame."""
    send_frame(sock, data)


def socket_recv(sock: socket.socket) -> dict[str, Any]:
    """Read one frame ({} on a clean EOF, as in the reference); a short read is a
    ProtocolError, not a silent empty reply."""
    return recv_frame(sock) or {}


def socket_request(
    address: tuple[str, int], data: dict[str, Any], timeout: int = 300
) -> dict[str, Any]:
    """One frame out, one frame back, on a new connection (no hello: for servers that take
    unauthenticated frames; our LMHandler does not, see `send_lm_request`)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        socket_send(sock, data)
        return socket_recv(sock)


# ------------------------------------------------------------------------- the LMHandler

_LINKS: dict[tuple[str, int], AddressLink] = {}
_LINKS_LOCK = threading.Lock()


def _link(address: tuple[str, int]) -> AddressLink:
    """One session per handler, at depth 0 (so requests are served at depth 1, the
    reference's sub-call depth), reached in this process."""
    key = (str(address[0]), int(address[1]))
    with _LINKS_LOCK:
        link = _LINKS.get(key)
        if link is None:
            link = _LINKS[key] = AddressLink(key)
    return link


def handler_endpoint(address: tuple[str, int]) -> HandlerEndpoint:
    """An authenticated TCP endpoint for the LMHandler this process started at `address`, for
    a process that is elsewhere. Raises ConfigurationError when no such handler runs here."""
    return _link(address).endpoint()


def _chat_completion(prompt: Prompt, result: dict[str, Any]) -> RLMChatCompletion:
    """Our wire result (`rlm.core.types.LMResponse.to_dict()`) as the reference's record."""
    usage = Usage.from_dict(result.get("usage") or {})
    model = str(result.get("model", ""))
    summary = ModelUsageSummary(1, usage.input_tokens, usage.output_tokens, usage.cost)
    return RLMChatCompletion(
        root_model=model,
        prompt=prompt,
        response=str(result.get("text", "")),
        usage_summary=UsageSummary({model: summary}),
        execution_time=float(result.get("latency", 0.0)),
    )


def _payload(kind: str, model: str | None, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": kind, **fields}
    if model is not None:
        payload["model"] = model
    return payload


def send_lm_request(
    address: tuple[str, int], request: LMRequest, timeout: int = 300, depth: int | None = None
) -> LMResponse:
    """Send `request` to the LMHandler at `address`; failures come back as `error`, as in the
    reference. `depth` is accepted for its signature: routing is the handler session's."""
    del depth
    try:
        link = _link(address)
        if request.prompts is not None:
            payload = _payload("llm_batch", request.model, prompts=request.prompts)
            items = link.request(payload, timeout)["results"]
            return LMResponse.batched_success_response(
                [_item(p, item) for p, item in zip(request.prompts, items, strict=True)]
            )
        result = link.request(_payload("llm", request.model, prompt=request.prompt), timeout)
    except (RLMError, OSError, KeyError, ValueError, TimeoutError) as exc:
        return LMResponse.error_response(f"Request failed: {type(exc).__name__}: {exc}")
    return LMResponse.success_response(_chat_completion(request.prompt or "", result))


def _item(prompt: Prompt, item: dict[str, Any]) -> RLMChatCompletion:
    if "result" in item:
        return _chat_completion(prompt, item["result"])
    error = item.get("error") or {}
    completion = _chat_completion(prompt, {})
    completion.error = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return completion


def send_lm_request_batched(
    address: tuple[str, int],
    prompts: list[Prompt],
    model: str | None = None,
    timeout: int = 300,
    depth: int = 0,
) -> list[LMResponse]:
    """One response per prompt, in order; a failed item is an error in its own slot."""
    reply = send_lm_request(address, LMRequest(prompts=prompts, model=model, depth=depth), timeout)
    if not reply.success or reply.chat_completions is None:
        return [LMResponse.error_response(reply.error or "no results") for _ in prompts]
    return [
        LMResponse.error_response(c.error) if c.error else LMResponse.success_response(c)
        for c in reply.chat_completions
    ]
