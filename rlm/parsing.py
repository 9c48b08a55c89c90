"""Reading a root LM reply: its ```repl code blocks and a FINAL(...) / FINAL_VAR(...) line.

Parsing is line based: a block opens with a line that is exactly a ```repl fence and closes at
the next line that is exactly ``` (so a fence inside a string on the same line as other text
does not end it). An unclosed block runs to the end of the reply (models get cut off).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

_OPEN = re.compile(r"^\s*```\s*([A-Za-z0-9_+-]*)\s*$")
_CLOSE = re.compile(r"^\s*```\s*$")
_FINAL_VAR = re.compile(r"^\s*FINAL_VAR\((.*)\)\s*$")
_FINAL_START = re.compile(r"^\s*FINAL\(")


@dataclass(frozen=True)
class Fence:
    language: str
    code: str


@dataclass(frozen=True)
class FinalDirective:
    """A final answer written in the reply's prose: FINAL(text) or FINAL_VAR(name)."""

    kind: str  # "text" or "var"
    value: str


def split_fences(text: str) -> tuple[list[Fence], str]:
    """All fenced blocks in order, and the reply's prose with the blocks removed."""
    fences: list[Fence] = []
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None:
            prose.append(lines[i])
            i += 1
            continue
        language = match.group(1).lower()
        body: list[str] = []
        i += 1
        while i < len(lines) and not _CLOSE.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # skip the closing fence (or run past the end)
        fences.append(Fence(language, "\n".join(body)))
    return fences, "\n".join(prose)


def find_code_blocks(text: str) -> list[str]:
    """The code of every ```repl block, in order."""
    fences, _ = split_fences(text)
    return [f.code for f in fences if f.language == "repl" and f.code.strip()]


def ignored_languages(text: str) -> list[str]:
    """Languages of fenced blocks that look like code meant to run but are not ```repl."""
    fences, _ = split_fences(text)
    return sorted({f.language for f in fences if f.language in {"python", "py", "python3", ""}})


def find_final(text: str) -> FinalDirective | None:
    """A FINAL(...) or FINAL_VAR(name) line outside code blocks, if the reply has one.

    FINAL's argument runs to the last closing parenthesis of the prose, so nested parentheses
    and multi-line answers survive; a quoted Python string literal is unquoted.
    """
    _, prose = split_fences(text)
    lines = prose.splitlines()
    for index, line in enumerate(lines):
        var = _FINAL_VAR.match(line)
        if var is not None:
            return FinalDirective("var", _unquote(var.group(1).strip()))
        if _FINAL_START.match(line):
            rest = "\n".join([line.split("FINAL(", 1)[1], *lines[index + 1 :]])
            end = rest.rfind(")")
            if end == -1:
                continue
            return FinalDirective("text", _unquote(rest[:end].strip()))
    return None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, str):
            return parsed
    return value


def strip_code(text: str) -> str:
    """The reply without its fenced blocks (used as the best answer when a run is cut short)."""
    _, prose = split_fences(text)
    return prose.strip()


# ----------------------------------------------------------- the reference's helpers
# `rlm.utils.parsing` of the reference exposes these; its users call them to format their own
# transcripts. Ours keep their inputs and outputs; the root loop itself uses `rlm.prompts`.


def format_execution_result(result: Any) -> str:
    """A cell's output as text: stdout, stderr and the names of its public variables.

    "No output" when there is nothing to show, as in the reference.
    """
    parts = [text for text in (result.stdout, result.stderr) if text]
    names = [
        name
        for name, value in (result.locals or {}).items()
        if not name.startswith("_") and not callable(value)
    ]
    if names:
        parts.append(f"REPL variables: {names}")
    return "\n\n".join(parts) if parts else "No output"


def format_iteration(iteration: Any, max_character_length: int = 20_000) -> list[dict[str, str]]:
    """The messages a turn adds to a history: the reply, then one user message with each
    block's output (head and tail kept when longer than `max_character_length`)."""
    from rlm.prompts import truncate

    messages = [{"role": "assistant", "content": iteration.response}]
    blocks = list(iteration.code_blocks)
    outputs = []
    for i, block in enumerate(blocks):
        header = f"REPL output (block {i + 1}):" if len(blocks) > 1 else "REPL output:"
        text = truncate(format_execution_result(block.result), max_character_length)
        outputs.append(f"{header}\n{text}")
    if outputs:
        messages.append({"role": "user", "content": "\n\n".join(outputs)})
    return messages


def convert_context_for_repl(context: Any) -> tuple[Any, str | None]:
    """(data, text): a str context is text; chat messages become their contents; else data."""
    if isinstance(context, str):
        return None, context
    if (
        isinstance(context, list)
        and context
        and isinstance(context[0], dict)
        and "content" in context[0]
    ):
        return [message.get("content", "") for message in context], None
    return context, None
