"""The MCP server behind `rlm mcp`: one tool, `rlm_completion`, over stdio (official `mcp` SDK).

MCP clients (Claude Desktop, Cursor, Cline, coding agents) hand it a question and a context too
large for their own window, as text or as a file path; it answers with the RLM's answer and a
usage line, and sends progress notifications (turns, sub-calls, child runs) while it runs.

The MCP session runs on its own event loop (anyio, in the main thread); each call's RLM run runs
on rlm's loop, so a cancelled call (`notifications/cancelled`, or the client going away)
cancels the run, whose cleanup closes its sandbox. The stdio transport of the SDK moves the
process's fd 1 aside while it serves, so output from code cells or sandboxes cannot corrupt the
protocol stream.

`context_path` reads only files under the directories the server was started with
(`--allow-dir`, default the working directory): the model driving the MCP client chooses the
path, and a prompt-injected model must not be able to send ~/.ssh to a provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from rlm._optional import require
from rlm.core.rlm import RLM
from rlm.errors import RLMError
from rlm.logger.redact import Redactor
from rlm.serve.runs import ProgressQueue, describe, request_rlm, usage_line

require("mcp", extra="mcp")
import anyio  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from pydantic import Field  # noqa: E402

TOOL_DESCRIPTION = """\
Answer a question about a context that may be far larger than your own context window (a long \
document, a log, a code dump, a dataset), with a Recursive Language Model: a model that reads \
the context through code in a Python REPL and delegates pieces to sub-models. Give the \
question and either `context` (the text itself) or `context_path` (a UTF-8 text file on this \
machine, under the directories the server allows). Returns the answer, then a usage line."""


class ContextSource:
    """Reads `context_path` arguments within the allowed directories and the size limit."""

    def __init__(self, allowed_dirs: Sequence[Path], max_context_chars: int | None) -> None:
        self.allowed_dirs = [d.expanduser().resolve() for d in allowed_dirs]
        self.max_context_chars = max_context_chars

    def load(self, context: str | None, context_path: str | None) -> str:
        if (context is None) == (context_path is None):
            raise ToolError("give exactly one of `context` (text) and `context_path` (a file)")
        text = context if context is not None else self._read(str(context_path))
        self._check_size(len(text))
        return text

    def _read(self, raw: str) -> str:
        try:
            path = Path(raw).expanduser().resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ToolError(f"context_path {raw!r}: no such file") from exc
        if not any(path.is_relative_to(d) for d in self.allowed_dirs):
            allowed = ", ".join(str(d) for d in self.allowed_dirs)
            raise ToolError(
                f"context_path {raw!r} is outside the directories this server may read ({allowed})"
            )
        if not path.is_file():
            raise ToolError(f"context_path {raw!r} is not a regular file")
        if self.max_context_chars is not None:  # refuse before reading a huge file
            self._check_size(path.stat().st_size // 4)
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(f"context_path {raw!r} is not UTF-8 text") from exc
        except OSError as exc:
            raise ToolError(f"cannot read context_path {raw!r}: {exc.strerror}") from exc

    def _check_size(self, chars: int) -> None:
        if self.max_context_chars is not None and chars > self.max_context_chars:
            raise ToolError(
                f"the context holds about {chars} characters; this server accepts at most "
                f"{self.max_context_chars}"
            )


def build_mcp_server(rlm: RLM, source: ContextSource) -> MCPServer[Any]:
    """An MCP server whose `rlm_completion` tool runs `rlm` (the server's limits apply)."""
    redactor = Redactor()
    server: MCPServer[Any] = MCPServer(
        "rlm",
        log_level="WARNING",  # the SDK logs every provider HTTP request at INFO otherwise
        instructions="Use rlm_completion for questions over inputs too large to read yourself.",
    )

    @server.tool(name="rlm_completion", description=TOOL_DESCRIPTION, structured_output=False)
    async def rlm_completion(
        question: Annotated[str, Field(description="what to answer about the context")],
        ctx: Context,
        context: Annotated[str | None, Field(description="the context as text")] = None,
        context_path: Annotated[
            str | None, Field(description="path of a UTF-8 text file holding the context")
        ] = None,
    ) -> list[str]:
        if not question.strip():
            raise ToolError("`question` is empty")
        text = source.load(context, context_path)
        progress = ProgressQueue(asyncio.get_running_loop())
        view = request_rlm(rlm, {}, [progress])
        run = asyncio.ensure_future(view.acompletion(text, root_prompt=question))
        reported = 0
        try:
            while True:
                getter = asyncio.ensure_future(progress.queue.get())
                done, _ = await asyncio.wait({run, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    reported += 1
                    await ctx.report_progress(reported, None, describe(getter.result()))
                    continue
                getter.cancel()
                break
            try:
                completion = run.result()
            except RLMError as exc:
                raise ToolError(redactor.text(f"the RLM run failed: {exc}")) from exc
        finally:
            if not run.done():  # the call was cancelled: stop the run
                run.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({run})
        if completion.stop_reason == "error" and not completion.response:
            raise ToolError(redactor.text(f"the RLM run failed: {completion.error}"))
        answer = redactor.text(completion.response or "")
        return [answer, f"[rlm] {usage_line(completion)}"]

    return server
