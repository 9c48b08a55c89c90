"""The text the root LM sees: system prompt, context metadata, per-turn feedback.

Nothing here is built with `str.format` on user text, so braces in a custom system prompt or a
tool description are safe. Every message depends only on the run's inputs and the code's
output (no timestamps or random ids), which keeps the root history byte-stable for prompt
caches.
"""

from __future__ import annotations

from collections.abc import Mapping

from rlm.core.types import QueryMetadata, REPLResult
from rlm.environments.base import ToolSpec

STRATEGY = """\
Strategy: first look at the context's structure (type, length, a few samples) before deciding \
how to split it; filter with Python (regexes, string search) before paying for sub-LLM calls; \
use a few large chunks per call rather than many small ones; collect intermediate answers in \
variables and combine them at the end.

"""

_SYSTEM_PROMPT = """\
You are tasked with answering a query with associated context. The context is NOT in this \
conversation: it is stored in a Python REPL as the variable `context`, and you work with it by \
writing code. The context may be far larger than what you can read at once, so inspect it \
programmatically, split it, and delegate reading to sub-LLMs.

Write Python code in fenced blocks tagged `repl`; every block in your reply runs, in order, in \
one persistent namespace (variables and functions survive between blocks and turns). You will \
see what the code prints (long output is truncated, so print summaries, not the whole context). \
The value of a block's last expression is printed too.

The REPL gives you:
1. `context`: the data to work with (also `context_0`; later contexts arrive as `context_1`, ...).
2. `llm_query(prompt, model=None) -> str`: ask a sub-LLM. It can read a large prompt (around \
100K characters), so give it whole chunks with a clear question, not tiny snippets.
3. `llm_query_batched(prompts, model=None) -> list[str]`: many independent sub-LLM calls run in \
parallel, answers in the same order. Prefer this over a loop of `llm_query` calls.
4. `llm_query_async(prompt, model=None)`: starts a sub-LLM call and returns a future at once; \
call `.result()` when you need the answer, so independent work overlaps.
5. `rlm_query(prompt, model=None, context=None) -> str` and \
`rlm_query_batched(prompts, model=None, contexts=None) -> list[str]`: like `llm_query` but \
the sub-call is itself a recursive LM with its own REPL, for sub-tasks that need their own \
decomposition (when recursion is disabled they are plain sub-LLM calls).
6. `SHOW_VARS()`: lists the variables you have created.
7. A sub-call that fails returns a string starting with "Error:" instead of raising; check for it.

{strategy}When you are done, give the final answer in one of these ways:
- in code: `answer["content"] = <your answer>` then `answer["ready"] = True`;
- in code: `FINAL(<value>)`, or `FINAL_VAR("variable_name")` to return a variable's value \
(lists and dicts are kept as values);
- outside code, on its own line: `FINAL(your answer)` or `FINAL_VAR(variable_name)`.
Do not give the final answer before you have seen the output that supports it.\
"""

# The built-in system prompt (with the strategy section, as `orchestrator=True` sends it).
SYSTEM_PROMPT = _SYSTEM_PROMPT.replace("{strategy}", STRATEGY)

HISTORY_NOTE = (
    "The full conversation so far (and the summaries of any compaction) is in the REPL "
    "variable `history`, a list of messages."
)


def build_system_prompt(
    custom_system_prompt: str | None,
    tools: Mapping[str, ToolSpec],
    *,
    max_depth: int,
    depth: int,
    orchestrator: bool = True,
    compaction: bool = False,
) -> str:
    """The system prompt; a custom one replaces the built-in text verbatim.

    `orchestrator=False` leaves out the built-in strategy section; `compaction=True` tells
    the model that `history` holds the whole conversation.
    """
    if custom_system_prompt is not None:
        parts = [custom_system_prompt]
    else:
        parts = [_SYSTEM_PROMPT.replace("{strategy}", STRATEGY if orchestrator else "")]
    if compaction:
        parts.append(HISTORY_NOTE)
    if depth + 1 < max_depth:
        parts.append(
            "Recursion is enabled: `rlm_query` starts a child RLM with its own REPL "
            f"(you are at depth {depth}, maximum depth {max_depth})."
        )
    if tools:
        lines = ["Custom tools available in the REPL:"]
        for spec in tools.values():
            kind = "function" if spec.callable else "value"
            description = f": {spec.description}" if spec.description else ""
            lines.append(f"- `{spec.name}` ({kind}){description}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _lengths_text(lengths: list[int], limit: int = 100) -> str:
    if len(lengths) <= limit:
        return str(lengths)
    shown = ", ".join(str(n) for n in lengths[:limit])
    return f"[{shown}, ... and {len(lengths) - limit} more]"


def context_metadata_message(
    metadata: QueryMetadata, root_prompt: str | None, *, index: int = 0
) -> str:
    """The first user message: what the context is (never its content) and the question."""
    name = "context" if index == 0 else f"context_{index}"
    text = (
        f"Your {name} is a {metadata.context_type} of {metadata.context_total_length} total "
        f"characters, in {len(metadata.context_lengths)} chunk(s) of lengths "
        f"{_lengths_text(metadata.context_lengths)}."
    )
    if index > 0:
        text += (
            f" It is new: earlier contexts are still available as context_0 ... "
            f"context_{index - 1}, and the conversations about them as history_0 ... "
            f"history_{index - 1}."
        )
    if root_prompt:
        text += "\n\nAnswer the following query, using the context: " + root_prompt
    else:
        text += "\n\nNo separate query was given: the task is described in the context itself."
    text += "\n\nStart by writing ```repl code to look at the context."
    return text


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail of a long output, with a marker of what was cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n... [{omitted} characters omitted] ...\n{text[len(text) - tail :]}"


def format_cell_output(index: int, result: REPLResult, limit: int) -> str:
    out = [f"[block {index}]"]
    if result.stdout:
        out.append(truncate(result.stdout, limit))
    if result.stderr:
        out.append("stderr:\n" + truncate(result.stderr, limit))
    if not result.stdout and not result.stderr:
        out.append("(no output)")
    return "\n".join(out)


def feedback_message(
    results: list[REPLResult], *, iteration: int, max_iterations: int, limit: int
) -> str:
    """The user message after a turn with code: each block's output, then the turn count."""
    body = "\n\n".join(format_cell_output(i + 1, r, limit) for i, r in enumerate(results))
    return (
        f"Output of your code:\n{body}\n\n"
        f"(Turn {iteration}/{max_iterations}. Continue, or give the final answer.)"
    )


def no_code_message(*, iteration: int, max_iterations: int, ignored: list[str]) -> str:
    hint = ""
    if ignored:
        hint = (
            " Blocks fenced as ```" + ignored[0] + " are not executed: "
            "tag code you want to run as ```repl."
        )
    return (
        "Your reply had no ```repl code and no final answer." + hint + " Write code to make "
        "progress, or give the final answer with FINAL(...) on its own line. "
        f"(Turn {iteration}/{max_iterations}.)"
    )


ANSWER_NOW = (
    "You have used all your turns. Reply now with your best final answer on its own line as "
    "FINAL(your answer), or FINAL_VAR(variable_name) for a variable in the REPL. Do not write "
    "more code."
)


COMPACTION_REQUEST = (
    "Your conversation is getting too long for your context window and will be compacted. "
    "Summarise your progress so far for your own later use: what you learned about the "
    "context, which REPL variables hold intermediate results, what you tried that failed, "
    "and what remains to do. Reply with the summary only, no code."
)


def compaction_note(count: int) -> str:
    return (
        f"(Your earlier turns were compacted into the summary above; compaction {count}. "
        "The full transcript is in the REPL variable `history` as a list of messages. "
        "All your REPL variables are still there. Continue.)"
    )
