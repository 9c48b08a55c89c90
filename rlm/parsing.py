"""Reading a root LM reply: its ```repl code blocks and a FINAL(...) / FINAL_VAR(...) line.

Parsing is line based: a block opens with a line that is exactly a ```repl fence and closes at
the next line that is exactly ``` (so a fence inside a string on the same line as other text
does not end it). An unclosed block runs to the end of the reply (models get cut off).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

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
