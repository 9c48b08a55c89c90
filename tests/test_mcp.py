"""`rlm mcp` as an MCP client meets it: the official `mcp` SDK's stdio client starts a real
`rlm mcp` process, lists its tool, calls it and receives progress. The provider simulator is
the model."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from rlm.testing import ProviderSimulator, SimRequest

ROOT = Path(__file__).resolve().parents[1]


def reply(request: SimRequest) -> str:
    first = request.messages[0]["content"]
    if "Answer the following query" not in first:
        return "SUB:" + str(len(request.messages[-1]["content"]))
    if "SLEEP" in first:
        return "```repl\nimport time\ntime.sleep(600)\n```"
    # The cell writes to fd 1 of the server process: it must not corrupt the protocol stream.
    return (
        "```repl\nimport os\nos.write(1, b'noise on fd 1\\n')\nr = llm_query(context[:10])\n"
        "answer['content'] = f'{len(context)} chars, {r}'\nanswer['ready'] = True\n```"
    )


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply=reply) as simulator:
        yield simulator


def with_session(
    sim: ProviderSimulator,
    allow_dir: Path,
    body: Callable[[ClientSession], Awaitable[Any]],
    *extra: str,
) -> Any:
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "rlm.cli",
            "mcp",
            "--model",
            "sim-model",
            "--backend-arg",
            f"base_url={sim.openai_base_url}",
            "--allow-dir",
            str(allow_dir),
            "--max-context-chars",
            "50000",
            *extra,
        ],
        env={"OPENAI_API_KEY": "sk-simulated", "PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
    )

    async def run() -> Any:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await body(session)

    return asyncio.run(asyncio.wait_for(run(), 120))


def texts(result: Any) -> list[str]:
    return [block.text for block in result.content]


def test_lists_the_tool_answers_and_reports_progress(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def body(session: ClientSession) -> Any:
        tools = await session.list_tools()
        result = await session.call_tool(
            "rlm_completion",
            {"question": "How long?", "context": "abcdefghij" * 30},
            progress_callback=on_progress,
        )
        return tools, result

    tools, result = with_session(sim, tmp_path, body)
    (tool,) = tools.tools
    assert tool.name == "rlm_completion"
    assert {"question", "context", "context_path"} <= set(tool.input_schema["properties"])
    assert not result.is_error
    answer, usage = texts(result)
    assert answer == "300 chars, SUB:10"
    assert usage.startswith("[rlm] stop=final_answer, 1 iterations, 2 LM calls")
    messages = [m for _, _, m in progress]
    assert "iteration 1 (depth 0)" in messages
    assert any(m and m.startswith("sub-call llm") for m in messages)
    assert [v for v, _, _ in progress] == sorted(v for v, _, _ in progress)


def test_context_path_within_and_outside_the_allowed_dirs(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    allowed = tmp_path / "docs"
    allowed.mkdir()
    (allowed / "report.txt").write_text("z" * 1234, encoding="utf-8")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send", encoding="utf-8")
    (allowed / "link.txt").symlink_to(secret)

    async def body(session: ClientSession) -> list[Any]:
        calls = [
            {"question": "q", "context_path": str(allowed / "report.txt")},
            {"question": "q", "context_path": str(secret)},
            {"question": "q", "context_path": str(allowed / "link.txt")},
            {"question": "q"},
            {"question": "q", "context": "x" * 60000},
        ]
        return [await session.call_tool("rlm_completion", args) for args in calls]

    inside, outside, link, neither, too_big = with_session(sim, allowed, body)
    assert texts(inside)[0] == "1234 chars, SUB:10"
    for refused in (outside, link):
        assert refused.is_error and "outside the directories" in texts(refused)[0]
    assert neither.is_error and "exactly one of" in texts(neither)[0]
    assert too_big.is_error and "at most 50000" in texts(too_big)[0]


def test_a_cancelled_call_stops_its_run_and_sandbox(sim: ProviderSimulator, tmp_path: Path) -> None:
    async def body(session: ClientSession) -> tuple[set[int], set[int]]:
        call = asyncio.ensure_future(
            session.call_tool("rlm_completion", {"question": "SLEEP", "context": "c"})
        )
        sandboxes = await _until(lambda: _sleeping(_children(_server_pid())), "a sandbox process")
        call.cancel()  # the client abandons the call: the SDK sends notifications/cancelled
        await asyncio.gather(call, return_exceptions=True)
        await _until(lambda: not (_children(_server_pid()) & sandboxes), "the sandbox to end")
        # The server goes on serving.
        after = await session.call_tool("rlm_completion", {"question": "q", "context": "abc"})
        assert texts(after)[0] == "3 chars, SUB:3"
        return sandboxes, _children(_server_pid())

    sandboxes, left = with_session(sim, tmp_path, body, "--environment", "process")
    assert sandboxes and not (left & sandboxes)


def _server_pid() -> int:
    (pid,) = [
        p
        for p in _children(os.getpid())
        if b"rlm.cli\x00mcp" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    return pid


def _children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _sleeping(pids: set[int]) -> set[int]:
    """The sandboxes running a cell that sleeps, not those the warm pool keeps waiting for a
    run: a thread of theirs sleeps in the kernel's nanosleep."""
    found = set()
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
            if any("nanosleep" in (task / "wchan").read_text() for task in tasks):
                found.add(pid)
        except OSError:
            continue
    return found


async def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
