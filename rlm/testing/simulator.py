"""An offline LLM provider: OpenAI, Azure OpenAI, Anthropic and Gemini wire formats over real HTTP.

Point any official SDK (or `rlm` itself) at it to test a pipeline without a network, an API key
or a bill. It answers with a fixed text or a function of the request, counts tokens (about four
characters per token), simulates prompt caching, and injects faults (rate limits, server errors,
connection resets, stalls) on demand or at a rate. Standard library only.

    from rlm.testing import ProviderSimulator

    with ProviderSimulator(reply=lambda req: req.messages[-1]["content"].upper()) as sim:
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="x")
        anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="x")
        genai.Client(api_key="x", http_options={"base_url": sim.gemini_base_url})
        openai.AzureOpenAI(azure_endpoint=sim.azure_endpoint, api_key="x", api_version="2024-10-21")
        sim.fail_next("429")            # the next request gets a rate limit with Retry-After
        sim.requests[-1].messages       # what the client sent, normalised

Endpoints: POST /v1/chat/completions (and /chat/completions, /openai/v1/chat/completions),
POST /openai/deployments/{deployment}/chat/completions, GET /v1/models, POST /v1/messages,
POST /{v1beta|v1}/models/{model}:generateContent (and :countTokens). Streaming is not simulated:
`"stream": true` gets a 400 that says so.

Every generation request waits `latency` seconds first (errors and faults included). Then, in
this order: a missing API key gives 401; an injected fault is applied; an invalid body gives
400; an unknown model (when `known_models` is set) gives 404; a prompt over `context_window`
tokens gives 400; otherwise the reply is produced, truncated to the request's max output tokens
if it is longer (finish reason "length" / "max_tokens" / "MAX_TOKENS").

Prompt caching (`prompt_cache=True`), per wire and model: OpenAI and Gemini report as cached the
longest message prefix seen before, if it is at least 1024 tokens, rounded down to a multiple of
128. Anthropic reads the longest prefix ending at a previously written `cache_control`
breakpoint (no 20-block look-back limit, no minimum length) and writes the prefix up to the
request's last breakpoint when it is new; its `input_tokens` exclude both, like the real API.

Command line, for pointing any SDK or tool at it:

    python -m rlm.testing.simulator --port 8765 --reply "hello" --latency 0.2

serves until Ctrl-C (see `--help` for fault rates, model lists and context windows).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from rlm.testing._wire_cache import PromptCache
from rlm.testing._wire_common import (
    Answer,
    ParsedPrompt,
    SimRequest,
    UsageCounts,
    Wire,
    WireError,
    tokens_of,
)
from rlm.testing._wire_gemini import count_tokens_body
from rlm.testing._wire_http import SimServer

FAULT_KINDS = ("429", "500", "reset", "timeout", "400", "401")


@dataclass
class SimReply:
    """A reply with explicit token counts (None: counted from the text)."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None


Reply = str | SimReply | Callable[[SimRequest], str | SimReply]


@dataclass
class FaultPlan:
    """Random faults: each generation request fails with probability `rate`, kind drawn from
    `kinds`. `retry_after` and `timeout_seconds` also apply to faults from `fail_next`."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "reset", "timeout")
    retry_after: float = 0.05
    timeout_seconds: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultPlan.rate must be within [0, 1], got {self.rate}")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"FaultPlan.kinds must be a non-empty subset of {FAULT_KINDS}")


class ProviderSimulator:
    """A local HTTP server that speaks the OpenAI, Azure OpenAI, Anthropic and Gemini APIs.

    `reply` is the answer text, or a function of the `SimRequest` returning a str or a
    `SimReply` (it runs in the server's thread pool, concurrently; an exception becomes a
    500 carrying its message). See the module docstring for the order of checks and the
    prompt-caching rules.
    """

    def __init__(
        self,
        reply: Reply = "ok",
        *,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        known_models: Collection[str] | None = None,
        context_window: int | None = None,
        prompt_cache: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        if context_window is not None and context_window < 1:
            raise ValueError(f"context_window must be >= 1, got {context_window}")
        self.reply = reply
        self.latency = latency
        self.faults = faults or FaultPlan()
        self.known_models = None if known_models is None else frozenset(known_models)
        self.context_window = context_window
        self.prompt_cache = prompt_cache
        self.host = host
        self.port = port
        self.requests: list[SimRequest] = []
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._rng_plan = self.faults
        self._forced: collections.deque[str] = collections.deque()
        self._cache = PromptCache()
        self._server: SimServer | None = None
        self._status_counts: collections.Counter[int] = collections.Counter()
        self._fault_counts: collections.Counter[str] = collections.Counter()
        self._generation_requests = 0
        self._in_flight = 0
        self._max_in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Start serving in a daemon thread (idempotent); returns the base URL."""
        with self._lock:
            if self._server is not None:
                return self.url
            server = SimServer(self, self.host, self.port)
            server.start()
            self._server = server
        return self.url

    def stop(self) -> None:
        """Stop serving: close the listener and every open connection, end stalls at once."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.stop()

    def __enter__(self) -> ProviderSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        server = self._server
        if server is None:
            raise RuntimeError("the simulator is not running; call start() or use `with`")
        return f"http://{server.server_name}:{server.server_port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def gemini_base_url(self) -> str:
        return self.url

    @property
    def azure_endpoint(self) -> str:
        return self.url

    # -- control and inspection ------------------------------------------------------------

    def fail_next(self, kind: str, n: int = 1) -> None:
        """Make the next `n` generation requests fail with `kind` (see FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._forced.extend([kind] * n)

    def clear_cache(self) -> None:
        """Forget every prompt prefix seen so far."""
        self._cache.clear()

    @property
    def stats(self) -> dict[str, Any]:
        """Counts: generation requests, responses per HTTP status, faults per kind, concurrency."""
        with self._lock:
            return {
                "requests": self._generation_requests,
                "status": dict(self._status_counts),
                "faults": dict(self._fault_counts),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"ProviderSimulator({where})"

    # -- request handling (server threads) --------------------------------------------------

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._status_counts[status] += 1

    @contextlib.contextmanager
    def _in_flight_scope(self) -> Iterator[None]:
        with self._lock:
            self._generation_requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _take_fault(self) -> str | None:
        with self._lock:
            if self._forced:
                kind = self._forced.popleft()
            elif self.faults.rate > 0:
                if self._rng_plan is not self.faults:  # a new plan was assigned: reseed
                    self._rng, self._rng_plan = random.Random(self.faults.seed), self.faults
                if self._rng.random() >= self.faults.rate:
                    return None
                kind = self._rng.choice(self.faults.kinds)
            else:
                return None
            self._fault_counts[kind] += 1
            return kind

    def _fault_answer(self, kind: str) -> Answer:
        if kind == "reset":
            return Answer("reset")
        if kind == "timeout":
            return Answer("stall")
        if kind == "429":
            wait = self.faults.retry_after
            raise WireError(
                "rate_limit",
                "Rate limit reached for requests (simulated). Please try again later.",
                headers={"retry-after": f"{wait:g}", "retry-after-ms": str(round(wait * 1000))},
            )
        if kind == "500":
            raise WireError(
                "server", "The server had an error processing your request (simulated)."
            )
        if kind == "401":
            raise WireError("authentication", "Incorrect API key provided (simulated).")
        raise WireError("invalid_request", "Bad request (simulated fault).")

    def _receive(
        self,
        wire: Wire,
        path: str,
        route_model: str | None,
        body: dict[str, Any],
        headers: dict[str, str],
        received: float,
    ) -> tuple[ParsedPrompt, SimRequest]:
        """Parse and record a generation request as it arrives (before the latency wait)."""
        prompt = wire.parse(body, route_model)
        request = SimRequest(
            wire=wire.name,
            path=path,
            model=prompt.model,
            system=prompt.system,
            messages=prompt.messages,
            body=body,
            headers=headers,
            time=received,
        )
        self.requests.append(request)
        return prompt, request

    def _generate(
        self, wire: Wire, prompt: ParsedPrompt, request: SimRequest, query: dict[str, list[str]]
    ) -> Answer:
        """Answer a recorded generation request, after latency (errors raised as WireError)."""
        path, headers = request.path, request.headers
        if not wire.authorized(headers, query):
            raise WireError(
                "authentication",
                "No API key provided: send it in the header your SDK uses "
                "(Authorization: Bearer, api-key, x-api-key or x-goog-api-key).",
                code=None,
            )
        fault = self._take_fault()
        if fault is not None:
            return self._fault_answer(fault)
        if prompt.problems:
            raise WireError("invalid_request", prompt.problems[0])
        if prompt.stream or path.endswith(":streamGenerateContent"):
            raise WireError(
                "invalid_request",
                "stream=true is not supported by the rlm provider simulator; request a "
                "non-streaming completion.",
                param="stream",
            )
        if self.known_models is not None and prompt.model not in self.known_models:
            raise WireError("not_found", wire.not_found_message(prompt.model), param="model")
        prompt_tokens = max(1, tokens_of(prompt.prompt_chars))
        if self.context_window is not None and prompt_tokens > self.context_window:
            raise WireError(
                "context_length",
                wire.context_message(prompt_tokens, self.context_window),
                param="messages",
            )
        reply = self._call_reply(request)
        return Answer(body=self._success(wire, prompt, reply, prompt_tokens))

    def _call_reply(self, request: SimRequest) -> SimReply:
        reply = self.reply
        try:
            value = reply(request) if callable(reply) else reply
        except Exception as exc:
            raise WireError(
                "server", f"reply function failed: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(value, str):
            return SimReply(value)
        if isinstance(value, SimReply):
            return value
        raise WireError("server", f"reply function returned {type(value).__name__}, not str")

    def _success(
        self, wire: Wire, prompt: ParsedPrompt, reply: SimReply, counted_prompt_tokens: int
    ) -> dict[str, Any]:
        text = reply.text
        prompt_tokens = (
            reply.input_tokens if reply.input_tokens is not None else counted_prompt_tokens
        )
        out_tokens = (
            reply.output_tokens if reply.output_tokens is not None else max(1, tokens_of(len(text)))
        )
        truncated = prompt.max_output_tokens is not None and out_tokens > prompt.max_output_tokens
        if truncated and prompt.max_output_tokens is not None:
            out_tokens = max(0, prompt.max_output_tokens)
            text = text[: out_tokens * 4]
        read = written = 0
        if self.prompt_cache:
            scope = f"{wire.name}:{prompt.model}"
            if wire.cache_rule == "prefix":
                read = self._cache.prefix_rule(scope, prompt.segments)
            else:
                read, written = self._cache.breakpoint_rule(scope, prompt.segments)
            read = min(read, prompt_tokens)
            written = min(written, prompt_tokens - read)
        usage = UsageCounts(prompt_tokens, out_tokens, read, written)
        return wire.success(prompt, text, truncated, usage)

    def _count_tokens(self, wire: Wire, route_model: str, body: dict[str, Any]) -> dict[str, Any]:
        inner = body.get("generateContentRequest", body)
        prompt = wire.parse(inner if isinstance(inner, dict) else {}, route_model)
        return count_tokens_body(max(1, tokens_of(prompt.prompt_chars)))

    def _model_names(self) -> list[str]:
        if self.known_models is not None:
            return sorted(self.known_models)
        return ["simulator"]


def main(argv: list[str] | None = None) -> int:
    """Serve the simulator until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m rlm.testing.simulator",
        description="Offline OpenAI / Azure / Anthropic / Gemini API simulator.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--reply", default="ok", help="the answer text (default: ok)")
    parser.add_argument("--echo", action="store_true", help="answer with the last message")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability of a fault")
    parser.add_argument("--fault-kinds", default="429,500,reset,timeout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", help="a known model (repeatable)")
    parser.add_argument("--context-window", type=int, default=None)
    parser.add_argument("--no-prompt-cache", action="store_true")
    args = parser.parse_args(argv)

    def echo(request: SimRequest) -> str:
        return request.messages[-1]["content"] if request.messages else ""

    try:
        faults = FaultPlan(
            rate=args.fault_rate, kinds=tuple(args.fault_kinds.split(",")), seed=args.seed
        )
    except ValueError as exc:
        parser.error(str(exc))
    sim = ProviderSimulator(
        echo if args.echo else args.reply,
        latency=args.latency,
        faults=faults,
        known_models=args.model,
        context_window=args.context_window,
        prompt_cache=not args.no_prompt_cache,
        host=args.host,
        port=args.port,
    )
    url = sim.start()
    try:  # a Ctrl-C while the banner prints stops it as cleanly as one later
        print(f"rlm provider simulator on {url}", flush=True)
        print(f"  OpenAI:    base_url={sim.openai_base_url}", flush=True)
        print(f"  Azure:     azure_endpoint={sim.azure_endpoint}", flush=True)
        print(f"  Anthropic: base_url={sim.anthropic_base_url}", flush=True)
        print(f"  Gemini:    http_options.base_url={sim.gemini_base_url}", flush=True)
        print("  any non-empty API key is accepted; Ctrl-C stops", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
