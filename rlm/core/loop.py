"""`RunLoop`: the turns of one RLM run.

It holds the state of one (root or child) run: the root history (append-only, except at a
counted compaction), the final answer, the stop reason. It gets what it needs and nothing
more: the run's frozen settings, the LM service and its session, the tree's budget and
events, the environment (`rlm.core.run.Tree` sets those up).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rlm.aio import to_thread
from rlm.clients.pricing import context_window
from rlm.core.events import Events, RunInfo
from rlm.core.settings import RunSettings
from rlm.core.types import (
    CodeBlock,
    LMResponse,
    Message,
    REPLResult,
    RLMIteration,
    StopReason,
    Usage,
)
from rlm.environments.base import BaseEnv
from rlm.errors import ConfigurationError, LimitExceededError, RLMError, TimeoutExceededError
from rlm.lm_service.budget import Budget
from rlm.lm_service.service import LMService, Session
from rlm.parsing import find_code_blocks, find_final, ignored_languages, strip_code
from rlm.prompts import (
    ANSWER_NOW,
    COMPACTION_REQUEST,
    compaction_note,
    feedback_message,
    no_code_message,
)


class RunLoop:
    """The turns of one run: root turn -> run its ```repl blocks -> feedback, until an answer."""

    def __init__(
        self,
        settings: RunSettings,
        service: LMService,
        *,
        budget: Budget,
        events: Events,
        info: RunInfo,
        session: Session,
        env: BaseEnv,
        model: str | None,
        history_index: int = 0,
    ) -> None:
        self.settings = settings
        self.service = service
        self.budget = budget
        self.events = events
        self.info = info
        self.session = session
        self.env = env
        self.model = model
        self.messages: list[Message] = []  # what the next root request sends
        self.transcript: list[Message] = []  # every message of the run, compactions included
        self.history_index = history_index
        self.compactions = 0
        self._last_input_tokens = 0  # the provider's count for the previous root request
        self._counted = 0  # messages covered by _last_input_tokens
        self.records: list[RLMIteration] = []
        self.iteration = 0
        self.answer_text: str | None = None
        self.answer_value: Any = None
        self.best = ""
        self.stop_reason: StopReason = "max_iterations"
        self.error: str | None = None
        self._sent = 0  # messages already sent in an earlier request

    async def run(self, messages: list[Message]) -> None:
        self.messages = messages
        self.transcript = list(messages)
        budget = self.budget
        try:
            async with asyncio.timeout(budget.remaining_time()):
                await self._turns()
        except TimeoutError:
            timeout = budget.limits.max_timeout or 0.0
            budget.trip(
                TimeoutExceededError(
                    elapsed=time.monotonic() - budget.started,
                    timeout=timeout,
                    message=f"max_timeout of {timeout}s exceeded",
                )
            )
            self.stop_reason = "max_timeout"
        except LimitExceededError as exc:
            self.stop_reason = exc.stop_reason  # type: ignore[assignment]
        except ConfigurationError:
            raise  # bad arguments (a missing API key at the first call) are the caller's to fix
        except RLMError as exc:
            self.stop_reason = "error"
            self.error = f"{type(exc).__name__}: {exc}"

    async def _turns(self) -> None:
        settings = self.settings
        consecutive_errors = 0
        while self.iteration < settings.max_iterations:
            self.iteration += 1
            self.events.emit("on_iteration_start", self.info, self.iteration)
            started = time.monotonic()
            reply, usage = await self._ask()
            # The prose of the latest reply is the best answer so far, even if its code then
            # runs into a limit.
            self.best = strip_code(reply) or self.best
            blocks = await self._run_blocks(reply)
            if self.answer_text is None:
                await self._final_from_prose(reply, blocks)
            self._record(reply, blocks, started, usage)
            if self.answer_text is not None:
                self.stop_reason = "final_answer"
                return
            failed = [b.result for b in blocks if b.result.error]
            consecutive_errors = consecutive_errors + 1 if failed else 0
            if settings.max_errors is not None and consecutive_errors >= settings.max_errors:
                self.stop_reason = "max_errors"
                self.error = failed[-1].stderr.strip() or str(failed[-1].error)
                return
            self.budget.check()
            if blocks:
                text = feedback_message(
                    [b.result for b in blocks],
                    iteration=self.iteration,
                    max_iterations=settings.max_iterations,
                    limit=settings.max_output_chars,
                )
            else:
                text = no_code_message(
                    iteration=self.iteration,
                    max_iterations=settings.max_iterations,
                    ignored=ignored_languages(reply),
                )
            self._append({"role": "user", "content": text})
        await self._answer_now()

    async def _answer_now(self) -> None:
        """Out of turns: one last call asking for the answer; its code still runs."""
        self._append({"role": "user", "content": ANSWER_NOW})
        started = time.monotonic()
        reply, usage = await self._ask()
        blocks = await self._run_blocks(reply)
        if self.answer_text is None:
            await self._final_from_prose(reply, blocks)
        self._record(reply, blocks, started, usage)
        if self.answer_text is None:
            self.best = strip_code(reply) or self.best
        self.stop_reason = "max_iterations"

    def _append(self, message: Message) -> None:
        self.messages.append(message)
        self.transcript.append(message)

    async def _ask(self) -> tuple[str, Usage]:
        if self.settings.compaction:
            if self._near_window():
                await self._compact()
            # `history` is in the REPL from the first turn on, and current at every turn.
            await to_thread(
                self.env.add_history, jsonable_messages(self.transcript), self.history_index
            )
        response = await self._call(list(self.messages))
        self._last_input_tokens = response.usage.input_tokens
        self._counted = len(self.messages)
        self._append({"role": "assistant", "content": response.text})
        return response.text, response.usage

    async def _call(self, messages: list[Message]) -> LMResponse:
        return await self.service.acomplete(
            messages, depth=self.info.depth, model=self.model, session=self.session, kind="root"
        )

    def _near_window(self) -> bool:
        """Whether the next root request nears the compaction share of the model's window."""
        window = self.settings.context_window or context_window(self.info.root_model)
        fresh = self.messages[self._counted :] if self._last_input_tokens else self.messages
        estimate = self._last_input_tokens + sum(len(m["content"]) for m in fresh) // 4
        return estimate >= self.settings.compaction_threshold_pct * window

    async def _compact(self) -> None:
        """Summarise the turns so far into one message; the REPL keeps the full transcript.

        This is the one place the root history is rewritten (a counted prompt-cache reset).
        """
        await to_thread(
            self.env.add_history, jsonable_messages(self.transcript), self.history_index
        )
        request = [*self.messages, {"role": "user", "content": COMPACTION_REQUEST}]
        summary = (await self._call(request)).text
        self.transcript.extend([request[-1], {"role": "assistant", "content": summary}])
        self.compactions += 1
        self.messages = [
            self.messages[0],
            self.messages[1],
            {"role": "assistant", "content": summary},
            {"role": "user", "content": compaction_note(self.compactions)},
        ]
        self.transcript.append(self.messages[-1])
        self._sent = 0
        self._last_input_tokens = 0
        self.events.emit("on_compaction", self.info, self.compactions, summary)

    async def _run_blocks(self, reply: str) -> list[CodeBlock]:
        blocks: list[CodeBlock] = []
        for code in find_code_blocks(reply):
            result = await self._execute(code)
            blocks.append(CodeBlock(code, result))
            if self.answer_text is not None or self.budget.tripped is not None:
                break
        return blocks

    async def _execute(self, code: str) -> REPLResult:
        result = await to_thread(self.env.execute, code)
        result.rlm_calls.extend(self.session.take_records())
        if result.final_answer is not None and self.answer_text is None:
            self.answer_text = result.final_answer
            self.answer_value = result.final_value
        return result

    async def _final_from_prose(self, reply: str, blocks: list[CodeBlock]) -> None:
        directive = find_final(reply)
        if directive is None:
            return
        if directive.kind == "text":
            self.answer_text = self.answer_value = directive.value
            return
        if not directive.value.isidentifier():
            return
        code = f"FINAL_VAR({directive.value!r})"
        blocks.append(CodeBlock(code, await self._execute(code)))

    def _record(self, reply: str, blocks: list[CodeBlock], started: float, usage: Usage) -> None:
        # The prompt of a turn is what this request added: the previous reply is already the
        # previous record's response, so it is left out and the log stays linear in size.
        added = [m for m in self.messages[self._sent : -1] if m["role"] != "assistant"]
        self._sent = len(self.messages)
        record = RLMIteration(
            prompt=added,
            response=reply,
            code_blocks=blocks,
            final_answer=self.answer_text,
            iteration_time=time.monotonic() - started,
            usage=usage,
        )
        self.records.append(record)
        self.events.emit("on_iteration", self.info, len(self.records), record)


def jsonable_messages(messages: list[Message]) -> list[Message]:
    """Plain role/content copies of messages (what an environment's `history` holds)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]
