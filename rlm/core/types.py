"""Plain data types shared by the loop, the handler, the clients and the environments.

The public names (`RLMChatCompletion`, `UsageSummary`, `ModelUsageSummary`, `REPLResult`,
`CodeBlock`, `RLMIteration`, `QueryMetadata`) are the reference implementation's, so code
written against it keeps working.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any, Literal, TypeAlias

from rlm.runtime.jsondata import to_jsonable

ClientBackend: TypeAlias = str
"""A backend name ("openai", "anthropic", ... or a plugin's); the reference's alias, kept open
because plugins register more names than a Literal could list."""

EnvironmentType: TypeAlias = str
"""An environment name ("local", "process", "docker", "modal", "e2b" or a plugin's)."""

Message: TypeAlias = dict[str, Any]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str}."""

Prompt: TypeAlias = str | list[Message]

StopReason: TypeAlias = Literal[
    "final_answer",
    "max_iterations",
    "max_timeout",
    "max_tokens",
    "max_budget",
    "max_errors",
    "max_subcalls",
    "cancelled",
    "error",
]


def _serialize_value(value: Any) -> Any:
    """`value` as JSON data for logs: containers walked (`rlm.runtime.jsondata`, so a cycle or
    deep nesting ends the walk), callables and modules named, the rest repr()'d. Named as in
    the reference, whose users call it on REPL locals."""

    def describe(item: Any) -> str:
        if isinstance(item, ModuleType):
            return f"<module '{item.__name__}'>"
        if callable(item):
            return f"<{type(item).__name__} '{getattr(item, '__name__', repr(item))}'>"
        try:
            return repr(item)
        except Exception:
            return f"<{type(item).__name__}>"

    return to_jsonable(value, describe)


def to_messages(prompt: Prompt) -> list[Message]:
    """Normalise a prompt (a string or a list of chat messages) to chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt
    ):
        return [dict(m) for m in prompt]
    raise TypeError("a prompt must be a str or a list of {'role', 'content'} messages")


@dataclass(frozen=True)
class Usage:
    """Token usage and cost of one LM call, read from that call's own response."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(): its deep copy is the largest cost of summarising a run of many calls.
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            input_tokens=int(data.get("input_tokens", 0)),
            output_tokens=int(data.get("output_tokens", 0)),
            cached_tokens=int(data.get("cached_tokens", 0)),
            cache_write_tokens=int(data.get("cache_write_tokens", 0)),
            cost=None if data.get("cost") is None else float(data["cost"]),
        )


@dataclass(frozen=True)
class LMResponse:
    """One completed LM call."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0
    cached: bool = False  # served from the sub-call cache, no provider call made

    def with_cost(self, cost: float) -> LMResponse:
        """This response with its usage priced at `cost`."""
        return replace(self, usage=replace(self.usage, cost=cost))

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "latency": self.latency,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LMResponse:
        return cls(
            text=str(data["text"]),
            model=str(data.get("model", "")),
            usage=Usage.from_dict(data.get("usage") or {}),
            latency=float(data.get("latency", 0.0)),
            cached=bool(data.get("cached", False)),
        )


@dataclass(frozen=True)
class ChildResult:
    """What `rlm_query` gets back from a child RLM (or the plain LM call standing in for one
    at max depth): its answer, who gave it, what the child's whole subtree used."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    stop_reason: StopReason = "final_answer"
    value: Any = None  # the FINAL_VAR value as JSON data
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "stop_reason": self.stop_reason,
            "value": self.value,
            "run_id": self.run_id,
        }


@dataclass
class ModelUsageSummary:
    """Usage of one model. The first four fields keep the reference's positional order."""

    total_calls: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cost: float | None = None
    total_cached_tokens: int = 0
    unpriced_calls: int = 0
    cache_hits: int = 0  # calls answered by the sub-call cache (counted in total_calls too)

    def add(self, usage: Usage, *, cached: bool = False) -> None:
        self.total_calls += 1
        self.cache_hits += int(cached)
        self.total_input_tokens += usage.input_tokens
        self.total_output_tokens += usage.output_tokens
        self.total_cached_tokens += usage.cached_tokens
        if usage.cost is None:
            self.unpriced_calls += 1
        else:
            self.total_cost = (self.total_cost or 0.0) + usage.cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelUsageSummary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class UsageSummary:
    """Usage per model name (the model that actually served the calls)."""

    model_usage_summaries: dict[str, ModelUsageSummary] = field(default_factory=dict)

    @property
    def total_calls(self) -> int:
        return sum(m.total_calls for m in self.model_usage_summaries.values())

    @property
    def total_input_tokens(self) -> int:
        return sum(m.total_input_tokens for m in self.model_usage_summaries.values())

    @property
    def total_output_tokens(self) -> int:
        return sum(m.total_output_tokens for m in self.model_usage_summaries.values())

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.total_output_tokens

    @property
    def total_cache_hits(self) -> int:
        return sum(m.cache_hits for m in self.model_usage_summaries.values())

    @property
    def total_cost(self) -> float | None:
        costs = [
            m.total_cost for m in self.model_usage_summaries.values() if m.total_cost is not None
        ]
        return sum(costs) if costs else None

    @property
    def unpriced_calls(self) -> int:
        """Calls whose cost is unknown (no price for their model): `total_cost` omits them."""
        return sum(m.unpriced_calls for m in self.model_usage_summaries.values())

    @property
    def cost_is_partial(self) -> bool:
        """True when `total_cost` is a sum over some calls only: show it as a lower bound."""
        return self.total_cost is not None and self.unpriced_calls > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_usage_summaries": {
                k: v.to_dict() for k, v in self.model_usage_summaries.items()
            },
            "total_cost": self.total_cost,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "cost_is_partial": self.cost_is_partial,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageSummary:
        models = data.get("model_usage_summaries") or {}
        return cls({k: ModelUsageSummary.from_dict(v) for k, v in models.items()})


class UsageLedger:
    """Thread-safe usage per model for one run; records also flow to the parent run's ledger.

    A child RLM's ledger has its parent's as `parent`, so the root's summary covers the whole
    recursion tree while each child's covers its own subtree.
    """

    def __init__(self, parent: UsageLedger | None = None) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        self._models: dict[str, ModelUsageSummary] = {}

    def record(self, model: str, usage: Usage, *, cached: bool = False) -> None:
        ledger: UsageLedger | None = self
        while ledger is not None:
            with ledger._lock:
                ledger._models.setdefault(model, ModelUsageSummary()).add(usage, cached=cached)
            ledger = ledger._parent

    def summary(self) -> UsageSummary:
        with self._lock:
            return UsageSummary(
                {k: ModelUsageSummary(**asdict(v)) for k, v in self._models.items()}
            )


@dataclass
class SubcallRecord:
    """One request a cell made to the LM service (an LM call, a child RLM or a tool)."""

    kind: Literal["llm", "rlm", "tool"]
    depth: int
    model: str
    prompt_preview: str
    response: str
    usage: Usage
    started: float
    ended: float
    error: str | None = None
    id: str = ""
    parent_id: str = ""
    child_run_id: str = ""  # for kind "rlm": the run id of the child RLM it started

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose (see Usage.to_dict): every other field is a scalar.
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data["usage"] = self.usage.to_dict()
        return data


@dataclass
class REPLResult:
    """What one code cell did."""

    stdout: str = ""
    stderr: str = ""
    # name -> short type/repr summary (our environments); any values where a user builds one
    locals: dict[str, Any] = field(default_factory=dict)
    execution_time: float = 0.0
    rlm_calls: list[Any] = field(default_factory=list)  # SubcallRecord (or RLMChatCompletion)
    final_answer: str | None = None
    final_value: Any = None  # the value FINAL/FINAL_VAR/answer returned, JSON-compatible
    error: str | None = None  # "ExceptionType: message" when the cell raised
    timed_out: bool = False

    def __str__(self) -> str:
        return (
            f"REPLResult(stdout={self.stdout}, stderr={self.stderr}, locals={self.locals}, "
            f"execution_time={self.execution_time}, rlm_calls={len(self.rlm_calls)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "locals": {k: _serialize_value(v) for k, v in self.locals.items()},
            "execution_time": self.execution_time,
            "rlm_calls": [c.to_dict() for c in self.rlm_calls],
            "final_answer": self.final_answer,
            "error": self.error,
            "timed_out": self.timed_out,
        }


@dataclass
class CodeBlock:
    code: str
    result: REPLResult

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "result": self.result.to_dict()}


@dataclass
class RLMIteration:
    """One root turn: the messages added since the previous request, the reply, its cells."""

    prompt: list[Message] | str
    response: str
    code_blocks: list[CodeBlock]
    final_answer: str | None = None
    iteration_time: float | None = None
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {
            "prompt": prompt,
            "response": self.response,
            "code_blocks": [b.to_dict() for b in self.code_blocks],
            "final_answer": self.final_answer,
            "iteration_time": self.iteration_time,
            "usage": self.usage.to_dict(),
        }


@dataclass(frozen=True, init=False)
class QueryMetadata:
    """What the root LM is told about `context`: its type and sizes, never its content.

    Built from the context itself, `QueryMetadata(context)`, as in the reference.
    """

    context_lengths: list[int]
    context_total_length: int
    context_type: str

    def __init__(self, context: Any) -> None:
        if isinstance(context, str):
            kind, lengths = "str", [len(context)]
        elif isinstance(context, dict):
            kind, lengths = "dict", [_length(v) for v in context.values()]
        elif isinstance(context, Sequence) and not isinstance(context, (bytes, bytearray)):
            kind, lengths = type(context).__name__, [_length(v) for v in context]
        else:
            kind, lengths = type(context).__name__, [_length(context)]
        object.__setattr__(self, "context_type", kind)
        object.__setattr__(self, "context_lengths", lengths)
        object.__setattr__(self, "context_total_length", sum(lengths))

    @classmethod
    def of(cls, context: Any) -> QueryMetadata:
        return cls(context)


def _length(value: Any) -> int:
    """Size of one chunk in characters: len() of a string, else of its JSON text."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return len(value["content"])
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return len(repr(value))


@dataclass
class RLMChatCompletion:
    """The result of `RLM.completion()`."""

    root_model: str
    prompt: Any
    response: str
    usage_summary: UsageSummary
    execution_time: float
    metadata: dict[str, Any] | None = None
    stop_reason: StopReason = "final_answer"
    error: str | None = None
    value: Any = None  # the typed answer (FINAL_VAR of a dict or list keeps it here)
    run_id: str = ""
    iterations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_model": self.root_model,
            "prompt": self.prompt,
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": self.execution_time,
            **({"metadata": self.metadata} if self.metadata is not None else {}),
            "stop_reason": self.stop_reason,
            "error": self.error,
            "value": self.value,
            "run_id": self.run_id,
            "iterations": self.iterations,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLMChatCompletion:
        return cls(
            root_model=data["root_model"],
            prompt=data.get("prompt"),
            response=data["response"],
            usage_summary=UsageSummary.from_dict(data.get("usage_summary") or {}),
            execution_time=float(data.get("execution_time", 0.0)),
            metadata=data.get("metadata"),
            stop_reason=data.get("stop_reason", "final_answer"),
            error=data.get("error"),
            value=data.get("value"),
            run_id=data.get("run_id", ""),
            iterations=int(data.get("iterations", 0)),
        )


@dataclass
class RLMMetadata:
    """An RLM's configuration as a trajectory's `run_metadata` records it (reference shape)."""

    root_model: str
    max_depth: int
    max_iterations: int
    backend: str
    backend_kwargs: dict[str, Any]
    environment_type: str
    environment_kwargs: dict[str, Any]
    other_backends: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON data; secrets (API keys, tokens, ...) in the kwargs are left out."""
        from rlm.utils.rlm_utils import filter_sensitive_keys

        return {
            "root_model": self.root_model,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "backend": self.backend,
            "backend_kwargs": _serialize_value(filter_sensitive_keys(self.backend_kwargs)),
            "environment_type": self.environment_type,
            "environment_kwargs": _serialize_value(filter_sensitive_keys(self.environment_kwargs)),
            "other_backends": self.other_backends,
        }
