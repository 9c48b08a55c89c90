"""`Tree`: one top-level completion and every child run below it.

A run needs a session of the LM service (its depth, the tree's budget, its ledger, a spawner
for its children, its tools) and an environment that reaches the service through that
session; `RunLoop` then does its turns. `rlm_query` comes back here, through the session's
spawner, as a child run of the same tree: same service, budget and events, its own session,
environment and ledger (which flows into its parent's).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlm.aio import to_thread
from rlm.core.arguments import validate_context
from rlm.core.events import Events, RunInfo
from rlm.core.loop import RunLoop, jsonable_messages
from rlm.core.settings import RunSettings
from rlm.core.types import (
    ChildResult,
    Message,
    QueryMetadata,
    RLMChatCompletion,
    SubcallRecord,
    Usage,
    UsageLedger,
)
from rlm.environments.base import BaseEnv
from rlm.environments.pool import SandboxPool
from rlm.errors import ConfigurationError, RLMError
from rlm.lm_service.budget import Budget
from rlm.lm_service.service import LMService, Session
from rlm.prompts import build_system_prompt, context_metadata_message
from rlm.runtime.jsondata import to_jsonable
from rlm.transport.inprocess import ServiceLink

CHILD_TASK_PROMPT = "The task is given in `context`: read it and do what it asks."


@dataclass
class Persistent:
    """The environment kept across completions when persistent=True (from the first on), and
    its link, which each completion points at a session of its own."""

    env: BaseEnv | None = None
    link: ServiceLink | None = None
    contexts: int = 0  # the index of the newest context loaded into it


@dataclass
class Tree:
    """What a top-level completion shares with every child run below it."""

    service: LMService
    settings: RunSettings
    budget: Budget
    events: Events
    sandboxes: SandboxPool
    # Builds an environment the pool does not serve: `rlm.core.rlm.get_environment`, looked
    # up at call time, the seam the reference's users patch.
    make_env: Callable[[str, Mapping[str, Any]], BaseEnv]
    persistent: Persistent | None = None  # for a persistent RLM's top run
    child_slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)

    async def run(
        self,
        context: Any,
        root_prompt: str | None,
        depth: int,
        ledger: UsageLedger,
        parent_id: str = "",
        model: str | None = None,
    ) -> tuple[RLMChatCompletion, bool]:
        """Run one RLM to its end; returns its completion and whether it was cancelled."""
        settings = self.settings
        client = self.service.router.route(depth, model)
        root_model = client.model_name
        if client is self.service.router.default and settings.root_model_name:
            root_model = settings.root_model_name  # as the user named it, as the reference
        run_id = uuid.uuid4().hex[:16]
        metadata = QueryMetadata.of(context)
        info = RunInfo(
            run_id=run_id,
            parent_id=parent_id,
            depth=depth,
            root_model=root_model,
            environment=settings.environment,
            root_prompt=root_prompt,
            context_type=metadata.context_type,
            context_total_length=metadata.context_total_length,
            context_lengths=metadata.context_lengths,
            settings=dict(settings.logged),
            context=context if depth == settings.depth else None,
        )
        started = time.monotonic()
        persistent = self.persistent if depth == settings.depth else None
        session, env, index = await self._open(ledger, depth, info, persistent)
        model_name = client.model_name if model else None
        loop = RunLoop(
            settings,
            self.service,
            budget=self.budget,
            events=self.events,
            info=info,
            session=session,
            env=env,
            model=model_name,
            history_index=index,
        )
        cancelled = False
        try:
            # A running cell stops when the tree's time runs out, in every environment.
            env.run_deadline = self.budget.deadline
            await to_thread(env.load_context, context, index)
            if settings.setup_code is not None and index == 0:
                await self._run_setup_code(env, settings.setup_code)
            self.events.emit("on_run_start", info)
            try:
                await loop.run(self._first_messages(metadata, root_prompt, depth, index))
            except asyncio.CancelledError:
                cancelled = True
                loop.stop_reason = "cancelled"
        finally:
            self.service.close_session(session)
            if persistent is not None:
                await to_thread(env.add_history, jsonable_messages(loop.transcript), index)
            else:
                await to_thread(self.sandboxes.discard, env)
        completion = RLMChatCompletion(
            root_model=root_model,
            prompt=context,
            response=loop.answer_text if loop.answer_text is not None else loop.best,
            usage_summary=ledger.summary(),
            execution_time=time.monotonic() - started,
            metadata=None,  # as in the reference: an RLMLogger fills it in (on_run_end)
            stop_reason=loop.stop_reason,
            error=loop.error,
            value=loop.answer_value,
            run_id=run_id,
            iterations=loop.iteration,
        )
        self.events.emit("on_run_end", info, completion)
        return completion, cancelled

    def _first_messages(
        self, metadata: QueryMetadata, root_prompt: str | None, depth: int, index: int
    ) -> list[Message]:
        settings = self.settings
        first = context_metadata_message(metadata, root_prompt, index=index)
        if settings.user_prologue:
            first += "\n\n" + settings.user_prologue
        system = build_system_prompt(
            settings.custom_system_prompt,
            settings.tools_at(depth)[1],
            max_depth=settings.max_depth,
            depth=depth,
            orchestrator=settings.orchestrator,
            compaction=settings.compaction,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": first}]

    @staticmethod
    async def _run_setup_code(env: BaseEnv, code: str) -> None:
        """`environment_kwargs["setup_code"]`: run before the first turn; failing is an error."""
        result = await to_thread(env.execute, code)
        if result.error or result.timed_out:
            raise ConfigurationError(
                "environment_kwargs['setup_code'] failed: "
                + (result.stderr.strip() or str(result.error))
            )

    async def _open(
        self, ledger: UsageLedger, depth: int, info: RunInfo, persistent: Persistent | None
    ) -> tuple[Session, BaseEnv, int]:
        """A session and an environment for one run (the kept one when persistent)."""
        events, run_id = self.events, info.run_id

        def on_start(record: SubcallRecord) -> None:
            record.parent_id = run_id
            events.emit("on_subcall_start", info, record)

        def on_record(record: SubcallRecord) -> None:
            record.parent_id = run_id
            events.emit("on_subcall", info, record)

        async def spawn(prompt: Any, context: Any, model: str | None) -> ChildResult:
            return await self.spawn(ledger, depth, run_id, prompt, context, model)

        tools, specs = self.settings.tools_at(depth)
        session = self.service.open_session(
            depth=depth,
            max_depth=self.settings.max_depth,
            budget=self.budget,
            ledger=ledger,
            spawn=spawn,
            tools=tools,
            on_start=on_start,
            on_record=on_record,
        )
        if persistent is not None and persistent.env is not None:
            assert persistent.link is not None
            persistent.contexts += 1
            persistent.link.rebind(session)
            return session, persistent.env, persistent.contexts
        link = ServiceLink(self.service, session)
        kwargs = {
            **self.settings.environment_kwargs,
            "handler": link,
            "depth": depth,
            "tools": specs,
        }
        environment = self.settings.environment
        try:
            direct = self.sandboxes.direct_kwargs(environment, kwargs)
            if direct is None:
                env = await to_thread(self.sandboxes.acquire, environment, kwargs)
            else:
                env = await to_thread(self.make_env, environment, direct)
        except BaseException:
            self.service.close_session(session)
            raise
        if persistent is not None:
            persistent.env, persistent.link = env, link
        return session, env, 0

    async def spawn(
        self,
        parent_ledger: UsageLedger,
        parent_depth: int,
        parent_id: str,
        prompt: Any,
        context: Any,
        model: str | None,
    ) -> ChildResult:
        """Run a child RLM for `rlm_query`: same service and budget, its own environment."""
        depth = parent_depth + 1
        if context is None:
            child_context, root_prompt = prompt, CHILD_TASK_PROMPT
        elif isinstance(prompt, str):
            child_context, root_prompt = context, prompt
        else:
            raise ConfigurationError("rlm_query: with a context, the prompt must be a str")
        validate_context(child_context)
        slots = self.child_slots.setdefault(
            depth, asyncio.Semaphore(self.settings.max_concurrent_subcalls)
        )
        async with slots:
            ledger = UsageLedger(parent_ledger)
            child, cancelled = await self.run(
                child_context, root_prompt, depth, ledger, parent_id, model
            )
        if cancelled:
            raise asyncio.CancelledError
        if child.stop_reason == "error" and not child.response:
            raise RLMError(f"child RLM failed: {child.error}")
        summary = child.usage_summary
        usage = Usage(
            input_tokens=summary.total_input_tokens,
            output_tokens=summary.total_output_tokens,
            cached_tokens=sum(
                m.total_cached_tokens for m in summary.model_usage_summaries.values()
            ),
            cost=summary.total_cost,
        )
        return ChildResult(
            text=child.response,
            model=child.root_model,
            usage=usage,
            stop_reason=child.stop_reason,
            value=to_jsonable(child.value),
            run_id=child.run_id,
        )
