"""Speed benchmarks: prints a table and writes BENCHMARKS.md. Not part of the tests' pass/fail.

Every figure runs the real stack: the OpenAI SDK over real HTTP against `rlm.testing`'s provider
simulator, the LMHandler over TCP, and a real environment. "Ideal" is the simulated latency
times the critical path (the least time any implementation needs).

    .venv/bin/python benchmarks/run.py            # all
    .venv/bin/python benchmarks/run.py B1 B2      # some
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm import RLM
from rlm.testing import ProviderSimulator, SimRequest

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


@dataclass
class Figure:
    id: str
    what: str
    target: str
    measured: str
    ideal: str
    ok: bool


def openai_rlm(root: ProviderSimulator, sub: ProviderSimulator, **kwargs: Any) -> RLM:
    return RLM(
        backend="openai",
        backend_kwargs={
            "model_name": "root-model",
            "base_url": root.openai_base_url,
            "api_key": "x",
        },
        other_backends=["openai"],
        other_backend_kwargs=[
            {"model_name": "sub-model", "base_url": sub.openai_base_url, "api_key": "x"}
        ],
        **kwargs,
    )


def turns(request: SimRequest) -> int:
    return sum(1 for m in request.messages if m["role"] == "assistant")


def cell_time(completion: Any, iteration: int = 0) -> float:
    blocks = completion.metadata["iterations"][iteration]["code_blocks"]
    return float(blocks[0]["result"]["execution_time"])


def b1() -> list[Figure]:
    """20 iterations x 1 llm_query at 0 ms; the second completion in the process."""

    def root(request: SimRequest) -> str:
        return repl("r = llm_query('hi')") if turns(request) < 20 else "FINAL(done)"

    with ProviderSimulator(root) as rs, ProviderSimulator("ok") as ss, openai_rlm(rs, ss) as rlm:
        rlm.completion("warm-up " * 100)
        times = []
        for _ in range(5):
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
            "20 iterations x 1 llm_query, 0 ms latency (2nd completion; median of 5)",
            "<= 0.25 s",
            f"{second:.3f} s (median {median:.3f} s)",
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


def b2() -> list[Figure]:
    """llm_query_batched of 256 prompts at 100 ms, default settings."""
    code = "rs = llm_query_batched([f'q{i}' for i in range(256)])\nFINAL(len(rs))"
    with (
        ProviderSimulator(lambda r: repl(code)) as rs,
        ProviderSimulator("ok", latency=0.1) as ss,
        openai_rlm(rs, ss) as rlm,
    ):
        rlm.completion("warm")
        out = rlm.completion("ctx")
    assert out.response == "256"
    t = cell_time(out)
    return [
        Figure(
            "B2",
            "llm_query_batched of 256 prompts at 100 ms (the cell's time)",
            "<= 0.45 s",
            f"{t:.3f} s",
            "0.100 s",
            t <= 0.45,
        )
    ]


def b3() -> list[Figure]:
    """rlm_query_batched of 8 children at depth 2, 100 ms per LM call."""
    root_code = (
        "rs = rlm_query_batched([f'Return the square of {i}' for i in range(8)])\nFINAL_VAR('rs')"
    )

    def sub(request: SimRequest) -> str:
        last = request.messages[-1]["content"]
        if "Start by writing" in last:  # a child's first turn
            return repl("n = int(context.split()[-1])\nok = llm_query('check')\nFINAL(n * n)")
        return "fine"

    with (
        ProviderSimulator(lambda r: repl(root_code)) as rs,
        ProviderSimulator(sub, latency=0.1) as ss,
        openai_rlm(rs, ss, max_depth=2) as rlm,
    ):
        rlm.completion("warm")
        out = rlm.completion("ctx")
    correct = out.value == [str(i * i) for i in range(8)]
    t = cell_time(out)
    return [
        Figure(
            "B3",
            "rlm_query_batched of 8 children at depth 2, 100 ms (cell time; all correct?)",
            "<= 0.75 s, 8/8",
            f"{t:.3f} s, {'8/8' if correct else 'WRONG'}",
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
    done = subprocess.run(
        [sys.executable, "-c", B4_CHILD], capture_output=True, text=True, check=True, cwd=ROOT
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        Figure(
            "B4",
            "100 MB str context, local env: time to first root call / peak RSS of the process",
            "<= 0.4 s, <= 220 MB",
            f"{data['first']:.3f} s, {data['rss_mb']:.0f} MB",
            "0 s, 100 MB",
            data["first"] <= 0.4 and data["rss_mb"] <= 220,
        )
    ]


def b7() -> list[Figure]:
    """One llm_query through the handler versus the same call straight to the client."""
    n = 200
    code = (
        "import time\nts = []\nfor _ in range(N):\n    t = time.perf_counter()\n"
        "    llm_query('x')\n    ts.append(time.perf_counter() - t)\n"
        "ts.sort()\nFINAL(ts[len(ts) // 2])"
    ).replace("N", str(n))
    with (
        ProviderSimulator(lambda r: repl(code)) as rs,
        ProviderSimulator("ok") as ss,
        openai_rlm(rs, ss) as rlm,
    ):
        out = rlm.completion("ctx")
        via_handler = float(out.response)
        client = rlm.other_clients[0]
        direct = []
        for _ in range(n):
            started = time.perf_counter()
            client.completion("x")
            direct.append(time.perf_counter() - started)
    extra = via_handler - statistics.median(direct)
    return [
        Figure(
            "B7",
            "llm_query via the handler minus a direct client call (median of 200)",
            "<= 1 ms",
            f"{extra * 1000:.2f} ms (handler {via_handler * 1000:.2f} ms)",
            "0 ms",
            extra <= 0.001,
        )
    ]


BENCHES: dict[str, Callable[[], list[Figure]]] = {"B1": b1, "B2": b2, "B3": b3, "B4": b4, "B7": b7}


def write_markdown(figures: list[Figure], command: str) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{command}` — machine: {platform.machine()}, {platform.python_version()}, "
        f"{_cores()} cores. Figures from the last run; not part of the tests' pass/fail.",
        "",
        "| id | what | target | measured | ideal | meets target |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.id} | {f.what} | {f.target} | {f.measured} | {f.ideal} | "
            f"{'yes' if f.ok else 'NO'} |"
        )
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="benchmark ids to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    figures: list[Figure] = []
    for name, bench in BENCHES.items():
        if args.only and name not in args.only:
            continue
        for figure in bench():
            figures.append(figure)
            verdict = "ok" if figure.ok else "MISSES TARGET"
            print(f"{figure.id:4} {figure.measured:40} target {figure.target:22} {verdict}")
    if not args.no_write:
        write_markdown(figures, "python benchmarks/run.py " + " ".join(args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
