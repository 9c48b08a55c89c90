"""Crash safety: a host process running an RLM (RLMLogger, a process or docker sandbox) is
interrupted mid-cell with SIGINT, SIGTERM or SIGKILL. Afterwards the JSON-lines trajectory
parses, and no sandbox process or container of that host remains.

What reaps the sandbox differs (SECURITY.md, "Crash safety"):
- SIGINT: KeyboardInterrupt unwinds the host, whose exit handlers kill the sandbox at once.
- SIGTERM and SIGKILL: the host runs no code. The sandbox's channel (its stdin) closes without
  a shutdown, and the worker kills its whole process group at once, running cell or not (even
  one that swallows its timeout); the container is removed when its worker exits.
- SIGTERM to the `rlm` command: it turns SIGTERM into KeyboardInterrupt, so the host cleans up
  as for SIGINT and exits with status 143.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlm.logger.replay import read_log

pytestmark = pytest.mark.timeout(240)

CELL_TIMEOUT = 30  # the sandbox must be gone long before the cell's timeout could end it
REAP_LIMIT = 15.0  # seconds after the signal (a loaded 2-core machine removing a container)

HOST_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from rlm import RLM
    from rlm.logger import RLMLogger

    kind, log_dir, marker, mode = sys.argv[1:5]

    def ready(pid):
        with open(marker + ".tmp", "w") as f:
            json.dump({"worker_pid": pid, "host_pid": os.getpid()}, f)
        os.replace(marker + ".tmp", marker)
        return True

    wait = "time.sleep(60)"
    if mode == "swallow":
        wait = "while True:\\n    try:\\n        time.sleep(60)\\n"
        wait += "    except BaseException:\\n        pass"
    code = "import os, time\\nprint('first output')\\nready(os.getpid())\\n" + wait
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": ["```repl\\n" + code + "\\n```"]},
        environment=kind,
        environment_kwargs={"timeout": CELL_TIMEOUT},
        logger=RLMLogger(log_dir=log_dir),
        custom_tools={"ready": ready},
    )
    rlm.completion("a context")
    """
).replace("CELL_TIMEOUT", str(CELL_TIMEOUT))


def require_docker() -> None:
    from rlm.environments.docker import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {reason}")
        pytest.skip(f"docker unavailable: {reason}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def containers_of(host_pid: int) -> list[str]:
    from rlm.environments.docker import LABEL, docker_client

    client = docker_client()
    try:
        found = client.api.containers(all=True, filters={"label": f"{LABEL}.host_pid={host_pid}"})
    finally:
        client.close()
    return [c["Id"] for c in found]


def start_host(
    tmp: Path, kind: str, mode: str = "sleep"
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start the host and wait until its cell is running; returns it and the marker."""
    script = tmp / "host.py"
    script.write_text(HOST_SCRIPT)
    marker = tmp / "marker.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, str(tmp / "logs"), str(marker), mode],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"the host exited early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the host never started its cell"
        time.sleep(0.05)
    return proc, json.loads(marker.read_text())


def sandbox_left(kind: str, marker: dict[str, int]) -> bool:
    if kind == "docker":
        return bool(containers_of(marker["host_pid"]))
    return alive(marker["worker_pid"])


def interrupt(tmp: Path, kind: str, sig: signal.Signals, mode: str = "sleep") -> str | None:
    """One scenario; returns what went wrong, or None."""
    proc, marker = start_host(tmp, kind, mode)
    signalled = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"the host did not exit after {sig.name}"
    if time.monotonic() - signalled > REAP_LIMIT:  # e.g. waiting for the cell's timeout
        return f"the host took {time.monotonic() - signalled:.0f}s to exit after {sig.name}"
    # The log parses, up to its last whole record.
    logs = list((tmp / "logs").glob("*.jsonl"))
    if len(logs) != 1:
        return f"expected one trajectory file, found {logs}"
    log = read_log(logs[0])
    kinds = [record["type"] for record in log.records]
    if kinds[:2] != ["header", "run_start"]:
        return f"the log lost its first records: {kinds}"
    # The sandbox goes away at once (see the module docstring for what reaps it), well before
    # the cell's timeout in "swallow" mode, where only the kill can end the cell.
    limit = REAP_LIMIT
    while sandbox_left(kind, marker):
        if time.monotonic() - signalled > limit:
            return f"the sandbox outlived the host by more than {limit:.0f}s"
        time.sleep(0.1)
    return None


def test_interrupted_hosts_leave_a_parseable_log_and_no_sandbox(tmp_path: Path) -> None:
    scenarios = [
        ("process", sig, "sleep") for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    ]
    # A cell that swallows its timeout cannot end by itself: only the worker's group kill ends it.
    scenarios += [("process", signal.SIGKILL, "swallow")]
    from rlm.environments.docker import docker_unavailable_reason

    docker_reason = docker_unavailable_reason()
    if docker_reason is None:
        scenarios += [("docker", signal.SIGTERM, "sleep"), ("docker", signal.SIGKILL, "swallow")]
    elif os.environ.get("RLM_REQUIRE_DOCKER") == "1":
        pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {docker_reason}")

    def run(scenario: tuple[str, signal.Signals, str]) -> str | None:
        kind, sig, mode = scenario
        where = tmp_path / f"{kind}-{sig.name}-{mode}"
        where.mkdir()
        return interrupt(where, kind, sig, mode)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        outcomes = dict(zip(scenarios, pool.map(run, scenarios), strict=True))
    failed = {
        f"{kind}/{sig.name}/{mode}": problem
        for (kind, sig, mode), problem in outcomes.items()
        if problem
    }
    assert not failed, failed
    if docker_reason is not None:
        pytest.skip(f"process scenarios passed; docker unavailable: {docker_reason}")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.mark.parametrize("kind", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_sigterm_to_the_rlm_command_cleans_up_at_once(tmp_path: Path, kind: str) -> None:
    """`rlm run` turns SIGTERM into KeyboardInterrupt: the sandbox is killed by the host's own
    cleanup, the command exits with 128 + SIGTERM, and the log keeps its records."""
    if kind == "docker":
        require_docker()
    context = tmp_path / "context.txt"
    context.write_text("a context")
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(60)"
    reply = f"```repl\n{code}\n```"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rlm.cli", "run", "--backend", "scripted",
            "--backend-arg", "responses=" + json.dumps([reply]),
            "--environment", kind, "--env-arg", f"timeout={CELL_TIMEOUT}",
            "--context", str(context), "--log-dir", str(tmp_path / "logs"),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # The cell is running once the sandbox has started its `sleep` child.
        deadline = time.monotonic() + 120
        sleeper = None
        while sleeper is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the cell never started"
            sleeper = next(
                (p for p in _descendants_or_container(proc.pid, kind) if b"sleep" in cmdline(p)),
                None,
            )
            time.sleep(0.05)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
        assert b"rlm: terminated" in err
        while alive(sleeper) or (kind == "docker" and containers_of(proc.pid)):
            assert time.monotonic() - signalled < 10, "the sandbox outlived the command"
            time.sleep(0.05)
        (log,) = (tmp_path / "logs").glob("*.jsonl")
        assert [r["type"] for r in read_log(log).records][:2] == ["header", "run_start"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _descendants_or_container(host_pid: int, kind: str) -> list[int]:
    """Processes of the host's sandbox: the worker's children, or a container's processes."""
    if kind == "process":
        workers = [p for p in children_of(host_pid) if b"rlm.runtime.worker" in cmdline(p)]
        return [child for worker in workers for child in children_of(worker)]
    from rlm.environments.docker import docker_client

    pids: list[int] = []
    client = docker_client()
    try:
        for container_id in containers_of(host_pid):
            with contextlib.suppress(Exception):
                top = client.api.top(container_id, ps_args="-o pid")
                pids += [int(row[0]) for row in top.get("Processes") or []]
    finally:
        client.close()
    return pids
