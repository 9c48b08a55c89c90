"""The OpenAI-compatible HTTP server behind `rlm serve` (aiohttp).

The server runs on rlm's own event loop (`rlm.aio`), the loop the shared `RLM`, its
LM service and its provider clients live on, so a request's run is awaited in the handler's own
task: when a client disconnects, aiohttp cancels that task (`handler_cancellation=True`), the
cancellation reaches the run, and the run's `finally` blocks close its handler session and its
sandbox before the handler returns. Nothing keeps running for a client that left.

Routes (all behind `Authorization: Bearer <key>`):
    GET  /v1/models, /v1/models/{id}
    POST /v1/chat/completions     (see `rlm.serve.chat_request` for what the body may hold)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rlm._optional import require
from rlm.core.rlm import RLM
from rlm.core.types import RLMChatCompletion
from rlm.errors import ConfigurationError, RLMError
from rlm.logger.redact import Redactor
from rlm.serve.chat_request import ChatRequest, RequestError, Split, error_body, parse_chat_request
from rlm.serve.runs import ProgressQueue, describe, request_rlm

require("aiohttp", extra="serve")
from aiohttp import web  # noqa: E402

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServeConfig:
    """How the server admits requests.

    api_key: the bearer token every request must carry.
    model_id: the one model name this server answers to (in /v1/models and `model`).
    split: how messages become context and question by default ("last_user", "all_context").
    max_body_bytes: larger request bodies get 413 before they are read.
    max_context_chars: larger message contents get 413 (None: no limit beyond the body size).
    max_runs: runs at once; further requests wait for a slot.
    heartbeat: seconds between SSE keep-alive comments while a streamed run is quiet.
    """

    api_key: str
    model_id: str = "rlm"
    split: Split = "last_user"
    max_body_bytes: int = 32 * 1024 * 1024
    max_context_chars: int | None = None
    max_runs: int = 32
    heartbeat: float = 15.0


class ChatServer:
    """Routes, admission and one run per request on a shared `RLM`."""

    def __init__(self, rlm: RLM, config: ServeConfig, log: TextIO | None = None) -> None:
        self.rlm = rlm
        self.config = config
        self.created = int(time.time())
        self.redactor = Redactor([config.api_key])
        self.active = 0
        self.max_active = 0
        self._log = log if log is not None else sys.stderr
        self._slots: asyncio.Semaphore | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        # The body limit is enforced by aiohttp too (for chunked bodies without a length).
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.max_body_bytes)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0 = any free port); returns the address actually bound."""
        self._slots = asyncio.Semaphore(self.config.max_runs)
        # At shutdown, runs get one second to finish before they are cancelled (and cleaned up).
        runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """Stop listening and cancel the runs in progress (their sandboxes close)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def log(self, text: str) -> None:
        print(f"rlm serve: {self.redactor.text(text)}", file=self._log, flush=True)

    # ------------------------------------------------------------------ admission

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Key first (401), then size (413), then the route; every error OpenAI-shaped."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.config.api_key.encode()
        ):
            return _error(
                401,
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return self._too_large()
        try:
            return await handler(request)
        except RequestError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except web.HTTPNotFound:
            return _error(404, f"no route {request.path}", code="not_found")
        except web.HTTPMethodNotAllowed:
            return _error(405, f"{request.method} is not allowed on {request.path}")
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug of ours: say so in OpenAI's shape, log the details
            self.log(f"internal error on {request.path}: {type(exc).__name__}: {exc}")
            return _error(500, "internal server error (see the server's log)")

    def _too_large(self) -> web.Response:
        return _error(
            413,
            f"request body over this server's limit of {self.config.max_body_bytes} bytes",
            code="request_too_large",
        )

    # ------------------------------------------------------------------ routes

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.config.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "rlm",
        }

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def _model(self, request: web.Request) -> web.Response:
        if request.match_info["model"] != self.config.model_id:
            return _error(404, "The model does not exist", code="model_not_found")
        return web.json_response(self._model_card())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON ({exc})") from exc
        chat = parse_chat_request(
            body,
            model_id=self.config.model_id,
            default_split=self.config.split,
            max_context_chars=self.config.max_context_chars,
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if chat.stream:
            return await self._stream(request, request_id, chat)
        view = request_rlm(self.rlm, chat.settings)
        completion = await self._run(request_id, view, chat)
        return web.json_response(self._completion_body(request_id, completion))

    # ------------------------------------------------------------------ runs

    async def _run(self, request_id: str, view: RLM, chat: ChatRequest) -> RLMChatCompletion:
        """Run one request's RLM; errors become `RequestError`s with the right status."""
        assert self._slots is not None
        async with self._slots:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                completion = await view.acompletion(chat.context, root_prompt=chat.question)
            except asyncio.CancelledError:
                # The run's own cleanup (session and sandbox closed) has finished by now.
                self.log(f"{request_id}: client disconnected; run cancelled and cleaned up")
                raise
            except ConfigurationError as exc:
                raise RequestError(self.redactor.text(str(exc))) from exc
            except RLMError as exc:
                self.log(f"{request_id}: run failed: {type(exc).__name__}: {exc}")
                raise RequestError(
                    self.redactor.text(f"the RLM run failed: {type(exc).__name__}: {exc}"),
                    status=502,
                    kind="server_error",
                    code="rlm_run_failed",
                ) from exc
            finally:
                self.active -= 1
        self.log(
            f"{request_id}: {completion.stop_reason} after {completion.iterations} iterations"
            f" (run {completion.run_id})"
        )
        if completion.stop_reason == "error" and not completion.response:
            raise RequestError(
                self.redactor.text(f"the RLM run failed: {completion.error}"),
                status=502,
                kind="server_error",
                code="rlm_run_failed",
            )
        return completion

    def _completion_body(self, request_id: str, completion: RLMChatCompletion) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_id,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self._answer(completion)},
                    "finish_reason": _finish_reason(completion),
                    "logprobs": None,
                }
            ],
            "usage": _usage(completion),
            "rlm": _rlm_info(completion),
        }

    def _answer(self, completion: RLMChatCompletion) -> str:
        return self.redactor.text(completion.response or "")

    async def _stream(
        self, request: web.Request, request_id: str, chat: ChatRequest
    ) -> web.StreamResponse:
        """SSE chunks: the role, progress as comments (and, opted in, as chunks without
        choices), the answer, the finish reason, the usage chunk when asked, `[DONE]`."""
        progress = ProgressQueue()
        view = request_rlm(self.rlm, chat.settings, [progress])
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data: dict[str, Any] = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model_id,
                "system_fingerprint": None,
                "choices": choices,
                **extra,
            }
            if chat.include_usage and "usage" not in data:
                data["usage"] = None
            return _sse(data)

        def delta(content: dict[str, Any], finish: str | None = None) -> bytes:
            return chunk(
                [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]
            )

        await response.write(delta({"role": "assistant", "content": ""}))
        task = asyncio.ensure_future(self._run(request_id, view, chat))
        try:
            while True:
                getter = asyncio.ensure_future(progress.queue.get())
                done, _ = await asyncio.wait(
                    {task, getter},
                    timeout=self.config.heartbeat,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    event = getter.result()
                    line = describe(event).replace("\n", " ")
                    await response.write(f": rlm {line}\n\n".encode())
                    if chat.progress_events:
                        await response.write(chunk([], rlm={"progress": event}))
                    continue
                getter.cancel()
                if task in done:
                    break
                await response.write(b": keep-alive\n\n")
            try:
                completion = task.result()
            except RequestError as exc:
                await response.write(_sse(exc.body()))
                await response.write(b"data: [DONE]\n\n")
                return response
            except Exception as exc:
                self.log(f"{request_id}: internal error: {type(exc).__name__}: {exc}")
                body = error_body(
                    "internal server error (see the server's log)", kind="server_error"
                )
                await response.write(_sse(body))
                await response.write(b"data: [DONE]\n\n")
                return response
            await response.write(delta({"content": self._answer(completion)}))
            await response.write(delta({}, _finish_reason(completion)))
            if chat.include_usage:
                await response.write(chunk([], usage=_usage(completion), rlm=_rlm_info(completion)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            if not task.done():  # the client left (a failed write or a cancelled handler)
                task.cancel()
                await asyncio.wait({task})


def _finish_reason(completion: RLMChatCompletion) -> str:
    """ "stop" for a final answer; "length" for a run a limit ended (the answer is then the
    best text so far; `rlm.stop_reason` says which limit)."""
    return "stop" if completion.stop_reason == "final_answer" else "length"


def _usage(completion: RLMChatCompletion) -> dict[str, Any]:
    """Tokens over the whole recursion tree: root turns, sub-calls and child runs."""
    summary = completion.usage_summary
    cached = sum(m.total_cached_tokens for m in summary.model_usage_summaries.values())
    return {
        "prompt_tokens": summary.total_input_tokens,
        "completion_tokens": summary.total_output_tokens,
        "total_tokens": summary.total_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _rlm_info(completion: RLMChatCompletion) -> dict[str, Any]:
    summary = completion.usage_summary
    info = {name: getattr(completion, name) for name in _RLM_INFO_FIELDS}
    return {**info, "lm_calls": summary.total_calls, "cost": summary.total_cost}


# The completion's fields a response's `rlm` object carries (with `lm_calls` and `cost`).
_RLM_INFO_FIELDS = ("run_id", "stop_reason", "error", "iterations", "execution_time")


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _error(status: int, message: str, *, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(error_body(message, kind=kind, code=code), status=status)
