"""Warm sandboxes (issue #21): an RLM keeps fresh, pre-started `process` / `docker` sandboxes,
and a run or a child takes one instead of starting its own. Run against the real sandboxes:
each pooled sandbox must be as fresh as a cold one, and nothing may outlive `close()`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sandbox_kinds import require_confinement, require_kind

from rlm import RLM
from rlm.core.types import Message
from rlm.environments.isolated import IsolatedEnv
from rlm.environments.pool import SandboxPool, split_pool_kwargs
from rlm.errors import ConfigurationError, SandboxError

pytestmark = pytest.mark.timeout(240)

KINDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]
FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def worker_pids() -> set[int]:
    """Live processes running the sandbox worker whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = re.search(r"PPid:\s+(\d+)", status)
        state = re.search(r"State:\s+(\w)", status)
        if (
            b"rlm.runtime.worker" in cmdline
            and ppid is not None
            and int(ppid.group(1)) == os.getpid()
            and not (state and state.group(1) == "Z")
        ):
            found.add(int(entry.name))
    return found


def sandboxes(kind: str) -> set[Any]:
    """The sandboxes of this test process that exist now (worker pids or container ids)."""
    if kind == "docker":
        from rlm.environments.docker import sandbox_containers

        return set(sandbox_containers(host_pid=os.getpid()))
    return set(worker_pids())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate: Any, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def scripted_rlm(kind: str, model: Any, **kwargs: Any) -> RLM:
    require_kind(kind)
    environment_kwargs = {"timeout": 60, **kwargs.pop("environment_kwargs", {})}
    return RLM(
        backend="scripted",
        backend_kwargs={"model_name": "m", "responses": model},
        environment=kind,
        environment_kwargs=environment_kwargs,
        **kwargs,
    )


def pool_stats(rlm: RLM) -> dict[str, int]:
    """The pool's counts over its configurations (a root's sandboxes and its children's are
    configured apart: their depth and tools differ)."""
    total: dict[str, int] = {}
    for stats in rlm._sandboxes.stats():
        for key, value in stats.items():
            total[key] = total.get(key, 0) + value
    return total


# Run 1 writes a file where a cell may write, starts a process that would live for minutes,
# and reports the sandbox's identity; run 2 reports what it sees of those.
LEAVE_TRACES = (
    "import os, socket, subprocess, sys\n"
    "open('/tmp/rlm-pool-trace', 'w').write('run one')\n"
    "open('trace-in-cwd', 'w').write('run one')\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "FINAL(f'{os.getpid()} {child.pid} {socket.gethostname()} {os.getuid()}')"
)
LOOK_FOR_TRACES = (
    "import os, socket\n"
    "seen = [p for p in ('/tmp/rlm-pool-trace', 'trace-in-cwd') if os.path.exists(p)]\n"
    "FINAL(f'{os.getpid()} {socket.gethostname()} {os.getuid()} {seen}')"
)


@pytest.mark.parametrize("kind", KINDS)
def test_a_pooled_sandbox_is_fresh_and_was_started_before_the_run(kind: str) -> None:
    replies = iter([repl(LEAVE_TRACES), repl(LOOK_FOR_TRACES)])
    rlm = scripted_rlm(kind, lambda messages: next(replies))
    before = sandboxes(kind)
    with rlm:
        first = rlm.completion("one").response.split()
        stats = pool_stats(rlm)
        # The run took a sandbox the pool started, and the pool started its replacement.
        assert stats["direct"] == 0 and stats["started"] == 2, stats
        assert wait_until(lambda: pool_stats(rlm)["ready"] == 1), pool_stats(rlm)
        # The used one is ended (in the background); only the warm one is left.
        assert wait_until(lambda: len(sandboxes(kind) - before) == 1), sandboxes(kind) - before
        second = rlm.completion("two").response.split()
        assert pool_stats(rlm)["direct"] == 0
    worker_pid, child_pid, host_one, uid_one = first
    pid_two, host_two, uid_two, seen = second[0], second[1], second[2], " ".join(second[3:])
    assert seen == "[]", "a file of the first run is visible in the second"
    if kind == "docker":
        assert host_one != host_two  # another container
    else:
        assert worker_pid != pid_two
        assert not alive(int(child_pid)), "a process of the first run is still alive"
        if os.geteuid() == 0:
            assert uid_one != uid_two  # each sandbox has a uid of its own
    assert wait_until(lambda: not sandboxes(kind) - before), sandboxes(kind) - before


@pytest.mark.parametrize("kind", KINDS)
def test_close_leaves_nothing_the_pool_started(kind: str) -> None:
    def model(messages: list[Message]) -> str:
        if "ROOT" in messages[1]["content"]:
            return repl("rs = rlm_query_batched([f'child {i}' for i in range(4)])\nFINAL(rs)")
        return repl("FINAL('ok')")

    rlm = scripted_rlm(kind, model, max_depth=2)
    before = sandboxes(kind)
    rlm.completion("x", root_prompt="ROOT")
    # The run showed 5 sandboxes in use at once (the root and its 4 children): 5 are kept.
    assert wait_until(lambda: pool_stats(rlm)["ready"] == 5), pool_stats(rlm)
    assert wait_until(lambda: len(sandboxes(kind) - before) == 5)
    rlm.close()
    assert rlm._sandboxes.closed
    assert not sandboxes(kind) - before  # at once: close() waited for everything


def test_close_waits_for_sandboxes_still_starting() -> None:
    require_kind("process")
    from rlm.environments.process import ProcessREPL

    before = sandboxes("process")
    pool = SandboxPool()
    env = pool.acquire("process", {"timeout": 30, "pool_size": 4})
    env.cleanup()
    pool.close()  # the replacement may still be starting: close() waits for it and ends it
    assert not sandboxes("process") - before
    with pytest.raises(SandboxError, match="cleaned up"):
        env.execute("1")
    assert isinstance(env, ProcessREPL)


@pytest.mark.parametrize("kind", KINDS)
def test_children_of_a_batch_take_their_sandboxes_at_the_same_time(kind: str) -> None:
    arrived = [0]  # child turns so far (each child has one)

    async def model(messages: list[Message]) -> str:
        if "ROOT" in messages[1]["content"]:
            code = "rs = rlm_query_batched([f'Return the square of {i}' for i in range(8)])"
            return repl(code + "\nFINAL(','.join(rs))")
        # A child's first turn comes once its sandbox is bound; hold each until all eight of
        # the batch are here, so that all hold their sandboxes at once.
        arrived[0] += 1
        batch_end = 8 * ((arrived[0] - 1) // 8 + 1)
        for _ in range(6000):
            if arrived[0] >= batch_end:
                break
            await asyncio.sleep(0.01)
        return repl("n = int(context.split()[-1])\nFINAL(n * n)")

    with scripted_rlm(kind, model, max_depth=2) as rlm:
        out = rlm.completion("x", root_prompt="ROOT")
        assert out.response == ",".join(str(i * i) for i in range(8))
        # Nine sandboxes were in use at once: the root's and all eight children's.
        assert pool_stats(rlm)["target"] == 9
        assert wait_until(lambda: pool_stats(rlm)["ready"] == 9), pool_stats(rlm)
        started = pool_stats(rlm)["started"]
        out = rlm.completion("x", root_prompt="ROOT")
        assert out.response == ",".join(str(i * i) for i in range(8))
        stats = pool_stats(rlm)
        assert stats["direct"] == 0
        assert stats["started"] == started + 9  # one replacement per sandbox taken


def test_a_failing_background_start_falls_back_to_a_direct_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_kind("process")
    from rlm.environments.process import ProcessREPL

    real_init = ProcessREPL.__init__

    def failing_prestart(self: ProcessREPL, *, prestart: bool = False, **kwargs: Any) -> None:
        if prestart:
            raise SandboxError("the engine is out of sandboxes")
        real_init(self, **kwargs)

    monkeypatch.setattr(ProcessREPL, "__init__", failing_prestart)
    replies = iter([repl("FINAL('first')"), repl("FINAL('second')"), repl("FINAL('third')")])
    rlm = scripted_rlm("process", lambda messages: next(replies))
    with caplog.at_level(logging.WARNING, logger="rlm.environments.pool"), rlm:
        assert rlm.completion("x").response == "first"
        assert rlm.completion("x").response == "second"
        assert rlm.completion("x").response == "third"
        stats = pool_stats(rlm)
    assert stats["direct"] == 3
    # After two failures in a row the pool stops warming this configuration: not one
    # failing start per run for ever.
    assert stats["started"] == 2, stats
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "could not provide a pre-started process sandbox" in m
        and "the engine is out of sandboxes" in m
        and "starting one directly" in m
        for m in messages
    ), messages


def test_pool_switches_and_bad_values() -> None:
    assert split_pool_kwargs("process", {"timeout": 3})[1] == 16
    assert split_pool_kwargs("process", {"pool": False})[1] == 0
    assert split_pool_kwargs("process", {"pool_size": 3}) == ({}, 3)
    assert split_pool_kwargs("docker", {})[1] == 16
    assert split_pool_kwargs("local", {"pool": False}) == ({}, 0)
    # The paid cloud sandboxes are warmed only when asked.
    for kind in ("modal", "e2b", "daytona", "prime"):
        with_pool = split_pool_kwargs(kind, {"pool": True, "pool_size": 2})
        assert split_pool_kwargs(kind, {})[1] == 0 and with_pool[1] == 2
    with pytest.raises(ConfigurationError, match="no sandbox to keep warm"):
        RLM(backend="scripted", environment="local", environment_kwargs={"pool": True})
    with pytest.raises(ConfigurationError, match="pool_size"):
        RLM(backend="scripted", environment="process", environment_kwargs={"pool_size": -1})
    with pytest.raises(ConfigurationError, match="pool must be"):
        RLM(backend="scripted", environment="process", environment_kwargs={"pool": "yes"})


def test_pool_false_starts_each_sandbox_directly() -> None:
    replies = iter([repl("FINAL('a')"), repl("FINAL('b')")])
    before = sandboxes("process")
    rlm = scripted_rlm("process", lambda m: next(replies), environment_kwargs={"pool": False})
    with rlm:
        assert rlm.completion("x").response == "a"
        assert not sandboxes("process") - before  # nothing kept between runs
        assert rlm.completion("x").response == "b"
        assert rlm._sandboxes.stats() == []


def test_a_pre_started_sandbox_runs_nothing_until_bound_and_binds_once() -> None:
    require_kind("process")
    from rlm.environments.process import ProcessREPL

    env = ProcessREPL(prestart=True, timeout=10)
    try:
        with pytest.raises(SandboxError, match="not bound"):
            env.execute("print('too early')")
        with pytest.raises(SandboxError, match="not bound"):
            env.load_context("a context before its run")
        env.bind(handler=None)
        assert env.execute("print(7 * 6)").stdout.strip() == "42"
        with pytest.raises(SandboxError, match="already bound"):
            env.bind(handler=None)
    finally:
        env.cleanup()


def test_a_sandbox_sharing_its_uid_is_never_kept_warm(caplog: pytest.LogCaptureFixture) -> None:
    require_kind("process")
    if os.geteuid() != 0:
        pytest.skip("user= needs a root host")
    replies = iter([repl("import os\nFINAL(os.getuid())"), repl("FINAL('again')")])
    rlm = scripted_rlm("process", lambda m: next(replies), environment_kwargs={"user": "nobody"})
    before = sandboxes("process")
    with caplog.at_level(logging.WARNING, logger="rlm.environments.pool"), rlm:
        assert rlm.completion("x").response != "0"
        assert not sandboxes("process") - before  # no waiting sandbox as the shared uid
        assert rlm.completion("x").response == "again"
        stats = pool_stats(rlm)
    # The first run's two starts (its own and a replacement) were refused; none after them.
    assert stats["started"] == 2 and stats["direct"] == 2, stats
    assert any("shared with other sandboxes" in r.getMessage() for r in caplog.records)


# The red team's question for the pool: can the code of one run reach a sandbox that waits
# for a later run (its channel token, its stdin) and so run code in that run's sandbox?
REACH_THE_WARM_ONE = (
    "import os, time\n"
    "me = os.getpid()\n"
    "def workers():\n"
    "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "        try:\n"
    "            if b'rlm.runtime.worker' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
    "                yield int(pid)\n"
    "        except OSError:\n"
    "            pass\n"
    "deadline = time.time() + 30\n"  # the replacement of this run's own sandbox is starting
    "while not [p for p in workers() if p != me] and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
    "found, reached = 0, []\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "    except OSError:\n"
    "        continue\n"
    "    if b'rlm.runtime.worker' not in cmd or int(pid) == me:\n"
    "        continue\n"
    "    found += 1\n"
    "    for what in ('environ', 'fd/0', 'mem'):\n"
    "        try:\n"
    "            open(f'/proc/{pid}/{what}', 'rb' if what != 'fd/0' else 'wb').close()\n"
    "            reached.append(what)\n"
    "        except OSError:\n"
    "            pass\n"
    "FINAL(f'{found} {reached}')"
)


def test_the_code_of_a_run_cannot_reach_a_warm_sandbox() -> None:
    require_kind("process")
    require_confinement()
    replies = iter([repl("FINAL('warm up')"), repl(REACH_THE_WARM_ONE), repl("FINAL('ok')")])
    with scripted_rlm("process", lambda m: next(replies)) as rlm:
        rlm.completion("x")
        assert wait_until(lambda: pool_stats(rlm)["ready"] == 1)
        found, reached = rlm.completion("x").response.split(" ", 1)
        assert int(found) >= 1, "the warm worker should be visible in /proc"
        assert reached == "[]"
        assert rlm.completion("x").response == "ok"  # the warm one was not tampered with


def test_the_pool_is_closed_when_it_is_collected() -> None:
    require_kind("process")
    before = sandboxes("process")
    pool = SandboxPool()
    pool.acquire("process", {"timeout": 30}).cleanup()
    assert wait_until(lambda: len(sandboxes("process") - before) == 1)
    del pool
    assert wait_until(lambda: not sandboxes("process") - before)


def test_isolated_env_rejects_the_pool_keywords_outside_an_rlm() -> None:
    require_kind("process")
    from rlm.environments.process import ProcessREPL

    with pytest.raises(ConfigurationError, match="pool"):
        ProcessREPL(pool=False)
    assert issubclass(ProcessREPL, IsolatedEnv) and ProcessREPL.pool_by_default
