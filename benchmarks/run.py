"""Speed benchmarks: prints a table and writes BENCHMARKS.md. Not part of the tests' pass/fail.

Every figure runs the real stack: the OpenAI SDK over real HTTP against `rlm.testing`'s provider
simulator, the LMHandler over TCP, and a real environment. "Ideal" is the simulated latency
times the critical path (the least time any implementation needs). Figures that vary from run
to run are medians of several repeats; the machine's load average is recorded beside them,
because on a shared machine it moves every figure.

    .venv/bin/python benchmarks/run.py            # all
    .venv/bin/python benchmarks/run.py B1 B2      # some
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm import RLM
from rlm.logger import RLMLogger
from rlm.testing import ProviderSimulator, SimRequest

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"
REPEATS = 5


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


@dataclass
class Figure:
    id: str
    what: str
    target: str
    measured: str
    ideal: str
    ok: bool | None  # None: no verdict (not measured here, or shown for comparison)


def openai_rlm(root: Any, sub: Any, sub_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> RLM:
    kwargs.setdefault("logger", RLMLogger())  # cell_time reads completion.metadata
    return RLM(
        backend="openai",
        backend_kwargs={
            "model_name": "root-model",
            "base_url": root.openai_base_url,
            "api_key": "x",
        },
        other_backends=["openai"],
        other_backend_kwargs=[
            {
                "model_name": "sub-model",
                "base_url": sub.openai_base_url,
                "api_key": "x",
                **(sub_kwargs or {}),
            }
        ],
        **kwargs,
    )


def turns(request: SimRequest) -> int:
    return sum(1 for m in request.messages if m["role"] == "assistant")


def cell_time(completion: Any, iteration: int = 0) -> float:
    blocks = completion.metadata["iterations"][iteration]["code_blocks"]
    return float(blocks[0]["result"]["execution_time"])


def spread(values: list[float]) -> str:
    return f"median of {len(values)}; min {min(values):.3f}, max {max(values):.3f}"


def b1() -> list[Figure]:
    """20 iterations x 1 llm_query at 0 ms; the second completion in the process."""

    def root(request: SimRequest) -> str:
        return repl("r = llm_query('hi')") if turns(request) < 20 else "FINAL(done)"

    with ProviderSimulator(root) as rs, ProviderSimulator("ok") as ss, openai_rlm(rs, ss) as rlm:
        rlm.completion("warm-up " * 100)
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            out = rlm.completion("context " * 100)
            times.append(time.perf_counter() - started)
        assert out.response == "done" and out.iterations == 21
        requests = [r for r in rs.requests if r.model == "root-model"][-21:]
        prefix_ok = sum(
            1
            for a, b in itertools.pairwise(requests)
            if json.dumps(b.messages).startswith(json.dumps(a.messages)[:-1])
        )
    second = times[0]
    median = statistics.median(times)
    return [
        Figure(
            "B1",
            "20 iterations x 1 llm_query, 0 ms latency (2nd completion in the process)",
            "<= 0.25 s",
            f"{second:.3f} s (later ones: median {median:.3f} s)",
            "0 s",
            second <= 0.25,
        ),
        Figure(
            "B6",
            "root requests that extend the previous one byte for byte (B1 run)",
            "100%",
            f"{100 * prefix_ok / (len(requests) - 1):.0f}% of {len(requests) - 1}",
            "100%",
            prefix_ok == len(requests) - 1,
        ),
    ]


@dataclass
class External:
    openai_base_url: str


@contextlib.contextmanager
def external_simulator(latency: float) -> Iterator[External]:
    """The simulator in its own process, as a real provider is: its CPU is not the client's."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "rlm.testing.simulator", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--latency", str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the simulator process did not start") from None
                time.sleep(0.1)
        yield External(f"http://127.0.0.1:{port}/v1")
    finally:
        proc.terminate()
        proc.wait(10)


def b2() -> list[Figure]:
    """llm_query_batched of 256 prompts at 100 ms, default settings; then, for comparison,
    with every sub-call sent through the openai SDK (`direct_http=False`)."""
    figures = []
    for sub_kwargs in ({}, {"direct_http": False}):
        times, cpu = _b2_run(sub_kwargs)
        t = statistics.median(times)
        measured = f"{t:.3f} s ({spread(times)}); CPU {statistics.median(cpu):.3f} s"
        if sub_kwargs:
            figures.append(
                Figure(
                    "B2",
                    "the same, each sub-call through the openai SDK's own request path "
                    "(direct_http=False), for comparison",
                    "none",
                    measured,
                    "0.100 s",
                    None,
                )
            )
        else:
            figures.append(
                Figure(
                    "B2",
                    "llm_query_batched of 256 prompts at 100 ms, sub-call simulator in its own "
                    "process (the cell's time; CPU of the rlm process per completion)",
                    "<= 0.45 s",
                    measured,
                    "0.100 s",
                    t <= 0.45,
                )
            )
    return figures


def _b2_run(sub_kwargs: dict[str, Any]) -> tuple[list[float], list[float]]:
    code = "rs = llm_query_batched([f'q{i}' for i in range(256)])\nFINAL(len(rs))"
    times, cpu = [], []
    with (
        ProviderSimulator(lambda r: repl(code)) as rs,
        external_simulator(latency=0.1) as ss,
        openai_rlm(rs, ss, sub_kwargs) as rlm,
    ):
        rlm.completion("warm")
        for _ in range(REPEATS):
            started = time.process_time()
            out = rlm.completion("ctx")
            cpu.append(time.process_time() - started)
            assert out.response == "256"
            times.append(cell_time(out))
    return times, cpu


def _b3_sub(request: SimRequest) -> str:
    last = request.messages[-1]["content"]
    if "Start by writing" in last:  # a child's first turn
        return repl("n = int(context.split()[-1])\nok = llm_query('check')\nFINAL(n * n)")
    return "fine"


B3_ROOT = "rs = rlm_query_batched([f'Return the square of {i}' for i in range(8)])\nFINAL_VAR('rs')"


def b3() -> list[Figure]:
    """rlm_query_batched of 8 children at depth 2, 100 ms per LM call."""
    times, correct = [], True
    with (
        ProviderSimulator(lambda r: repl(B3_ROOT)) as rs,
        ProviderSimulator(_b3_sub, latency=0.1) as ss,
        openai_rlm(rs, ss, max_depth=2) as rlm,
    ):
        rlm.completion("warm")
        for _ in range(REPEATS):
            out = rlm.completion("ctx")
            if out.value != [str(i * i) for i in range(8)]:
                correct = False
                print(f"B3 wrong answer ({out.stop_reason}): {out.value!r:.2000}", file=sys.stderr)
            times.append(cell_time(out))
    t = statistics.median(times)
    return [
        Figure(
            "B3",
            "rlm_query_batched of 8 children at depth 2, 100 ms (cell time; all correct?)",
            "<= 0.75 s, 8/8",
            f"{t:.3f} s, {'8/8' if correct else 'WRONG'} ({spread(times)})",
            "0.200 s",
            t <= 0.75 and correct,
        )
    ]


B4_CHILD = r"""
import json, resource, sys, time
from rlm import RLM
from rlm.testing import ProviderSimulator
first = []
def root(request):
    first.append(time.perf_counter())
    return "FINAL(ok)"
with ProviderSimulator(root) as sim:
    kwargs = {"model_name": "m", "base_url": sim.openai_base_url, "api_key": "x"}
    rlm = RLM(backend="openai", backend_kwargs=kwargs)
    rlm.completion("warm")
    first.clear()
    context = "abcdefghij" * 10_000_000
    started = time.perf_counter()
    out = rlm.completion(context)
    rlm.close()
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first": first[0] - started, "rss_mb": rss_mb}))
"""


def b4() -> list[Figure]:
    """A 100 MB string context, local environment: time to the first root call, peak RSS."""
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", B4_CHILD], capture_output=True, text=True, check=True, cwd=ROOT
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = statistics.median(r["first"] for r in runs)
    rss = max(r["rss_mb"] for r in runs)
    return [
        Figure(
            "B4",
            "100 MB str context, local env: time to first root call / peak RSS of the process",
            "<= 0.4 s, <= 220 MB",
            f"{first:.3f} s, {rss:.0f} MB (median / max of 3 processes)",
            "0 s, 100 MB",
            first <= 0.4 and rss <= 220,
        )
    ]


LLM_COST = (
    "import time\nts = []\nfor _ in range({n}):\n    t = time.perf_counter()\n"
    "    llm_query('x')\n    ts.append(time.perf_counter() - t)\n"
    "ts.sort()\nprint(ts[len(ts) // 2])"
)


def b5() -> list[Figure]:
    """Docker: warm cell round trip, 100 MB context into the container, llm_query overhead."""
    what = (
        "Docker: warm cell round trip",
        "Docker: 100 MB str context into the container",
        "Docker: llm_query from the container minus from the local env (median of 100)",
        "Docker: llm_query through the in-process link minus the old loopback TCP hop",
    )
    try:
        from rlm.environments.docker import DockerREPL, docker_unavailable_reason

        reason = docker_unavailable_reason()
    except Exception as exc:  # the docker extra or the environment is not there
        reason = f"{type(exc).__name__}: {exc}"
    if reason is not None:
        skipped = f"not measured: {reason}"[:120]
        return [
            Figure("B5", what[0], "<= 50 ms", skipped, "0 ms", None),
            Figure("B5", what[1], "<= 3 s", skipped, "0 s", None),
            Figure("B5", what[2], "<= 5 ms", skipped, "0 ms", None),
            Figure("B5", what[3], "< 0 ms", skipped, "0 ms", None),
        ]
    from rlm.aio import run_sync
    from rlm.clients.openai import OpenAIClient
    from rlm.environments.local import LocalREPL
    from rlm.lm_service.service import LMService
    from rlm.transport.inprocess import ServiceLink
    from rlm.transport.tcp import tcp_transport

    def run(env: Any, code: str) -> str:
        result = env.execute(code)
        assert result.error is None, result.stderr
        return str(result.stdout)

    with ProviderSimulator("ok") as sim:
        client = OpenAIClient("sub-model", base_url=sim.openai_base_url, api_key="x")
        service = LMService(client)
        # As RLM builds them: each environment holds an in-process link to the service.
        docker = DockerREPL(handler=ServiceLink(service, service.open_session()), timeout=120)
        local = LocalREPL(handler=ServiceLink(service, service.open_session()))
        # The path every sandbox took before the service was split from its transport: the
        # host relayed each request over loopback TCP to the handler (a token, a hello, a
        # reader thread and one more encode/decode pair per request).
        tcp = tcp_transport(service)
        docker_tcp = DockerREPL(handler=tcp.endpoint(service.open_session()), timeout=120)
        try:
            for _ in range(5):
                run(docker, "1")
            samples = []
            for _ in range(50):
                started = time.perf_counter()
                run(docker, "1")
                samples.append(time.perf_counter() - started)
            warm = statistics.median(samples)
            code = LLM_COST.format(n=100)
            run(local, code)  # warm the client
            run(docker_tcp, code)
            from_local, from_docker, over_tcp = [], [], []
            for _ in range(3):  # interleaved, so load changes touch all three alike
                from_local.append(float(run(local, code)))
                from_docker.append(float(run(docker, code)))
                over_tcp.append(float(run(docker_tcp, code)))
            context = "abcdefghij" * 10_000_000
            started = time.perf_counter()
            docker.load_context(context, 1)
            transfer = time.perf_counter() - started
            assert run(docker, "print(len(context_1))").strip() == str(len(context))
        finally:
            docker.cleanup()
            docker_tcp.cleanup()
            local.cleanup()
            run_sync(service.aclose())
            client.close()
    local_ms = statistics.median(from_local) * 1000
    docker_ms = statistics.median(from_docker) * 1000
    tcp_ms = statistics.median(over_tcp) * 1000
    return [
        Figure(
            "B5", what[0], "<= 50 ms", f"{warm * 1000:.1f} ms (median of 50)", "0 ms", warm <= 0.05
        ),
        Figure("B5", what[1], "<= 3 s", f"{transfer:.2f} s", "0 s", transfer <= 3.0),
        Figure(
            "B5",
            what[2],
            "<= 5 ms",
            f"{docker_ms - local_ms:+.2f} ms (docker {docker_ms:.2f}, local {local_ms:.2f} ms)",
            "0 ms",
            docker_ms - local_ms <= 5,
        ),
        Figure(
            "B5",
            what[3],
            "< 0 ms",
            f"{docker_ms - tcp_ms:+.2f} ms (link {docker_ms:.2f}, loopback TCP {tcp_ms:.2f} ms)",
            "0 ms",
            docker_ms < tcp_ms,
        ),
    ]


def b7() -> list[Figure]:
    """One llm_query through the handler versus the same call straight to the client.

    Blocks of 50 calls alternate between the two paths (4 blocks each), so a change in the
    machine's load during the run shifts both medians alike.
    """
    n, blocks = 50, 4
    code = LLM_COST.format(n=n) + "\nFINAL(ts[len(ts) // 2])"
    via_handler: list[float] = []
    direct: list[float] = []
    with (
        ProviderSimulator(lambda r: repl(code)) as rs,
        ProviderSimulator("ok") as ss,
        openai_rlm(rs, ss) as rlm,
    ):
        client = rlm.other_clients[0]
        client.respond("warm")
        for _ in range(blocks):
            via_handler.append(float(rlm.completion("ctx").response))
            for _ in range(n):
                started = time.perf_counter()
                client.respond("x")
                direct.append(time.perf_counter() - started)
    handler_median = statistics.median(via_handler)
    extra = handler_median - statistics.median(direct)
    return [
        Figure(
            "B7",
            f"llm_query via the handler minus a direct client call ({blocks} x {n} each)",
            "<= 1 ms",
            f"{extra * 1000:.2f} ms (handler {handler_median * 1000:.2f} ms)",
            "0 ms",
            extra <= 0.001,
        )
    ]


def b8() -> list[Figure]:
    """The B3 tree run again with the sub-call cache: no provider request at all."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProviderSimulator(lambda r: repl(B3_ROOT)) as rs,
        ProviderSimulator(_b3_sub, latency=0.1) as ss,
        openai_rlm(rs, ss, max_depth=2, cache=Path(tmp) / "cache.sqlite3") as rlm,
    ):
        first = rlm.completion("ctx")
        before = rs.stats["requests"] + ss.stats["requests"]
        started = time.perf_counter()
        again = rlm.completion("ctx")
        elapsed = time.perf_counter() - started
        made = rs.stats["requests"] + ss.stats["requests"] - before
    same = again.value == first.value
    hits = again.usage_summary.total_cache_hits
    return [
        Figure(
            "B8",
            "re-run of the B3 tree with the sub-call cache (provider requests; time)",
            "0 requests",
            f"{made} requests, {hits} hits, {elapsed:.3f} s, "
            f"{'same answer' if same else 'DIFFERENT'}",
            "0 requests",
            made == 0 and same,
        )
    ]


B9_TASKS = 40
B10_BURN = (
    "n = 0\nfor i in range(6_000_000):\n    n += i * i\n"
    "answer['content'] = str(n % 97)\nanswer['ready'] = True"
)


def _batch_spec(sim: ProviderSimulator) -> dict[str, Any]:
    return {
        "backend": "openai",
        "backend_kwargs": {
            "model_name": "gpt-4o-mini",
            "base_url": sim.openai_base_url,
            "api_key": "sk-bench",
        },
    }


def _batch_time(tasks: list[dict[str, Any]], spec: dict[str, Any], **kwargs: Any) -> float:
    from rlm.batch import run_batch

    started = time.perf_counter()
    results = list(run_batch(tasks, spec, **kwargs))
    elapsed = time.perf_counter() - started
    if len(results) != len(tasks) or not all(r.ok for r in results):
        raise RuntimeError(f"batch benchmark: not every task answered: {results[:2]}")
    return elapsed


def b9() -> list[Figure]:
    """Ray's cost per task against the in-process executor: 40 one-turn tasks at 0 ms model
    latency, 4 at a time, on a Ray instance already running (its start-up shown apart)."""
    import ray

    tasks = [{"id": i, "context": f"doc {i}"} for i in range(B9_TASKS)]
    code = repl("answer['content'] = context.upper()\nanswer['ready'] = True")
    with ProviderSimulator(lambda r: code) as sim:
        spec = _batch_spec(sim)
        _batch_time(tasks[:4], spec, concurrency=4)  # warm: imports, first client
        local = _batch_time(tasks, spec, concurrency=4)
        started = time.perf_counter()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - started
        try:
            _batch_time(tasks[:4], spec, executor="ray", concurrency=4)  # actors' first run
            on_ray = _batch_time(tasks, spec, executor="ray", concurrency=4)
        finally:
            ray.shutdown()
    per_task = (on_ray - local) / B9_TASKS * 1000
    return [
        Figure(
            "B9",
            f"rlm batch of {B9_TASKS} one-turn tasks, 4 at a time: in process vs Ray "
            "(Ray's start-up apart)",
            "none",
            f"in process {local:.2f} s, Ray {on_ray:.2f} s (+{per_task:.0f} ms per task); "
            f"Ray start-up {startup:.1f} s",
            "0 ms per task",
            None,
        )
    ]


def b10() -> list[Figure]:
    """A batch whose cells burn CPU: 6 tasks in process (one interpreter, one GIL) against
    Ray with two workers (two processes, two cores)."""
    import ray

    tasks = [{"id": i, "context": "x"} for i in range(6)]
    code = repl(B10_BURN)
    with ProviderSimulator(lambda r: code) as sim:
        spec = _batch_spec(sim)
        local = _batch_time(tasks, spec, concurrency=2)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            _batch_time(tasks[:2], spec, executor="ray", concurrency=2)
            on_ray = _batch_time(tasks, spec, executor="ray", concurrency=2)
        finally:
            ray.shutdown()
    return [
        Figure(
            "B10",
            "rlm batch of 6 CPU-bound tasks (a 6M-step loop in the cell), 2 at a time: in "
            "process vs Ray with 2 workers",
            "Ray faster",
            f"in process {local:.2f} s, Ray {on_ray:.2f} s ({local / on_ray:.2f}x)",
            "2x on 2 cores",
            on_ray < local,
        )
    ]


def b11() -> list[Figure]:
    """A completion over a 200 MB context with the default `RLMLogger` against none.

    The root answers at once, so the figure is the logger's own cost (the context stored once
    beside the log). Runs alternate between the two (3 each), so a change in the machine's load
    moves both medians alike.
    """
    from rlm.logger.jsonl import RLMLogger

    context = ("lorem ipsum dolor sit amet " * 8_000_000)[:200_000_000]
    answer = repl("FINAL(str(len(context)))")
    plain: list[float] = []
    logged: list[float] = []
    sizes: list[int] = []
    with ProviderSimulator(lambda r: answer) as rs, ProviderSimulator("ok") as ss:
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                for times, logger in ((plain, None), (logged, RLMLogger(tmp))):
                    with openai_rlm(rs, ss, logger=logger) as rlm:
                        rlm.completion("warm-up")
                        started = time.perf_counter()
                        out = rlm.completion(context)
                        times.append(time.perf_counter() - started)
                    assert out.response == str(len(context))
                sizes.append(sum(f.stat().st_size for f in Path(tmp).iterdir()))
    without, with_logger = statistics.median(plain), statistics.median(logged)
    extra = with_logger - without
    return [
        Figure(
            "B11",
            "completion over a 200 MB context: default RLMLogger vs none (3 each, alternating)",
            "<= 2x or +1 s",
            f"{with_logger:.2f} s vs {without:.2f} s (+{extra:.2f} s); "
            f"{max(sizes) / 1e6:.0f} MB on disk",
            f"{without:.2f} s",
            with_logger <= 2 * without or extra <= 1.0,
        )
    ]


# B12, B13: what starting sandboxes costs a run, per environment, without the warm pool
# (cold: `pool=False`, every run and child starts its own) and with it (warm, the default).
POOL_MODES: tuple[tuple[str, dict[str, Any]], ...] = (("cold", {"pool": False}), ("warm", {}))
POOL_ENVIRONMENTS = ("local", "process", "docker")


def _skip_reason(environment: str) -> str | None:
    if environment != "docker":
        return None
    from rlm.environments.docker import docker_unavailable_reason

    return docker_unavailable_reason()


def _pool_runs(environment: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(mode, environment_kwargs) per mode that applies: local has no sandbox to warm."""
    return (("no sandbox", {}),) if environment == "local" else POOL_MODES


def _settle(rlm: RLM, seconds: float = 60.0) -> None:
    """Wait (untimed) until the warm pool holds all it aims to: a completion that comes after
    a pause. A no-op without a pool."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stats = rlm._sandboxes.stats()
        if all(s["ready"] >= s["target"] and not s["starting"] + s["ending"] for s in stats):
            return
        time.sleep(0.02)


def _pool_times(
    rlm: RLM, prompt: str, check: Callable[[Any], bool]
) -> tuple[list[float], list[float], bool]:
    """Completion times after a warm-up: each after a pause (the pool refilled), then back to
    back (starts can fall behind); and whether every answer was right."""
    rlm.completion("warm-up")
    paused: list[float] = []
    back_to_back: list[float] = []
    correct = True
    for series, settle in ((paused, True), (back_to_back, False)):
        for _ in range(REPEATS):
            if settle:
                _settle(rlm)
            started = time.perf_counter()
            out = rlm.completion(prompt)
            series.append(time.perf_counter() - started)
            correct = correct and check(out)
    return paused, back_to_back, correct


def _pool_figure(
    bench: str, what: str, target: float | None, ideal: str, result: tuple[Any, ...]
) -> Figure:
    paused, back_to_back, correct = result
    t = statistics.median(paused)
    return Figure(
        bench,
        what,
        "n/a" if target is None else f"<= {target:g} s, all correct",
        f"{t:.3f} s{'' if correct else ' WRONG'} ({spread(paused)}); back to back: median "
        f"{statistics.median(back_to_back):.3f} s, max {max(back_to_back):.3f}",
        ideal,
        None if target is None else (t <= target and correct),
    )


def _pool_bench(
    bench: str,
    what: str,
    targets: dict[str, float],
    ideal: str,
    simulators: Callable[[], tuple[ProviderSimulator, ProviderSimulator]],
    check: Callable[[Any], bool],
    **rlm_kwargs: Any,
) -> list[Figure]:
    """`what` per environment and pool mode, timed by `_pool_times` against the root and
    sub-call simulators `simulators()` makes; `targets` hold for the warm pool only."""
    figures = []
    for environment in POOL_ENVIRONMENTS:
        reason = _skip_reason(environment)
        for mode, kwargs in _pool_runs(environment):
            label = f"{what}: {environment}, {mode} (completion time)"
            target = targets.get(environment) if mode == "warm" else None
            if reason is not None:
                figures.append(Figure(bench, label, "n/a", f"skipped: {reason}", ideal, None))
                continue
            rs, ss = simulators()
            with (
                rs,
                ss,
                openai_rlm(
                    rs, ss, environment=environment, environment_kwargs=kwargs, **rlm_kwargs
                ) as rlm,
            ):
                result = _pool_times(rlm, "context", check)
            figures.append(_pool_figure(bench, label, target, ideal, result))
    return figures


def b12() -> list[Figure]:
    """One turn with one llm_query at 0 ms, a later completion in the process."""
    return _pool_bench(
        "B12",
        "one turn, 1 llm_query, 0 ms",
        {"process": 0.03, "docker": 0.1},
        "0 s",
        lambda: (
            ProviderSimulator(lambda r: repl("r = llm_query('hi')\nFINAL(r)")),
            ProviderSimulator("ok"),
        ),
        lambda out: out.response == "ok",
    )


def b13() -> list[Figure]:
    """rlm_query_batched of 8 children at depth 2, 100 ms per LM call, whole completion.
    Ideal: the root's turn, then each child's turn and its llm_query, 100 ms each."""
    squares = [str(i * i) for i in range(8)]
    return _pool_bench(
        "B13",
        "8 children at depth 2, 100 ms",
        {"process": 0.7, "docker": 1.0},
        "0.3 s",
        lambda: (
            ProviderSimulator(lambda r: repl(B3_ROOT), latency=0.1),
            ProviderSimulator(_b3_sub, latency=0.1),
        ),
        lambda out: out.value == squares,
        max_depth=2,
    )


B14_CHILD = r"""
import json, sys, time
started = time.perf_counter()
from rlm import RLM
imported = time.perf_counter()
root_url, sub_url = sys.argv[1], sys.argv[2]
rlm = RLM(
    backend="openai",
    backend_kwargs={"model_name": "root-model", "base_url": root_url, "api_key": "x"},
    other_backends=["openai"],
    other_backend_kwargs=[{"model_name": "sub-model", "base_url": sub_url, "api_key": "x"}],
)
built = time.perf_counter()
times, cpu = [], []
for _ in range(2):
    t, c = time.perf_counter(), time.process_time()
    out = rlm.completion("ctx")
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    assert out.response == "256", out.response
rlm.close()
timing = {"import": imported - started, "build": built - imported, "times": times, "cpu": cpu}
print(json.dumps(timing))
"""
B14_ROOT = "rs = llm_query_batched([f'q{i}' for i in range(256)])\nprint(len(rs))"


def b14() -> list[Figure]:
    """The first completion in a fresh process against the second: a root turn whose cell runs
    llm_query_batched of 256 prompts, then a root turn that answers; 100 ms per model call.
    Each of 3 fresh processes times its first and second `completion()` (both simulators run
    in this process, not the measured one)."""

    def root(request: SimRequest) -> str:
        return repl(B14_ROOT) if turns(request) == 0 else "FINAL(256)"

    runs = []
    with (
        ProviderSimulator(root, latency=0.1) as rs,
        ProviderSimulator("ok", latency=0.1) as ss,
    ):
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-c", B14_CHILD, rs.openai_base_url, ss.openai_base_url],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = statistics.median(r["times"][0] for r in runs)
    second = statistics.median(r["times"][1] for r in runs)
    gap = statistics.median(r["times"][0] - r["times"][1] for r in runs)
    imported = statistics.median(r["import"] for r in runs)
    built = statistics.median(r["build"] for r in runs)
    cpu = [statistics.median(r["cpu"][i] for r in runs) for i in (0, 1)]
    return [
        Figure(
            "B14",
            "first vs second completion in a fresh process: root turn, llm_query_batched of "
            "256 prompts, root turn; 100 ms per call (median of 3 processes)",
            "first <= second + 0.1 s",
            f"first {first:.3f} s, second {second:.3f} s (+{gap:.3f} s; CPU {cpu[0]:.3f} / "
            f"{cpu[1]:.3f} s); before them: import rlm {imported:.3f} s, RLM() {built:.3f} s",
            "0.300 s each",
            gap <= 0.1,
        )
    ]


BENCHES: dict[str, Callable[[], list[Figure]]] = {
    "B1": b1,
    "B2": b2,
    "B3": b3,
    "B4": b4,
    "B5": b5,
    "B7": b7,
    "B8": b8,
    "B9": b9,
    "B10": b10,
    "B11": b11,
    "B12": b12,
    "B13": b13,
    "B14": b14,
}


def verdict(figure: Figure) -> str:
    return "n/a" if figure.ok is None else "yes" if figure.ok else "NO"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def write_markdown(figures: list[Figure], command: str, loads: tuple[str, str]) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{command}`. Machine: {machine()}. Load average (1/5/15 min) "
        f"{loads[0]} before, {loads[1]} after. Figures from the last run; not part of the "
        "tests' pass/fail. On a shared or loaded machine every figure moves: compare "
        "medians taken at low load.",
        "",
        "| id | what | target | measured | ideal | meets target |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.id} | {f.what} | {f.target} | {f.measured} | {f.ideal} | {verdict(f)} |"
        )
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="benchmark ids to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    unknown = [name for name in args.only if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark ids {unknown}; known: {list(BENCHES)}")
    before = load()
    print(f"machine: {machine()}; load average {before}")
    print(f"{'id':4} {'measured':58} {'ideal':10} {'target':22} verdict")
    figures: list[Figure] = []
    for name, bench in BENCHES.items():
        if args.only and name not in args.only:
            continue
        for figure in bench():
            figures.append(figure)
            print(
                f"{figure.id:4} {figure.measured:58} {figure.ideal:10} {figure.target:22} "
                f"{ {'yes': 'ok', 'NO': 'MISSES TARGET', 'n/a': 'n/a'}[verdict(figure)] }",
                flush=True,
            )
    after = load()
    print(f"load average after: {after}")
    if not args.no_write:
        command = "python benchmarks/run.py " + " ".join(args.only)
        write_markdown(figures, command.strip(), (before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
