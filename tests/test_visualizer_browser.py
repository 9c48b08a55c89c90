"""The visualizer in a real browser: headless Chromium (Debian's, driven by playwright-core from
visualizer/e2e/view.mjs) against a live `rlm view` over a run recorded with recursion.

Needs /usr/bin/chromium (or $RLM_CHROMIUM), node, `npm ci` in visualizer/ and the built app
(scripts/browser_setup.sh, scripts/build_visualizer.sh). Without them the test skips, unless
RLM_REQUIRE_BROWSER=1, when it fails. The screenshot is written to the test's tmp directory
(and copied to $RLM_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm import RLM
from rlm.core.types import Message
from rlm.logger import RLMLogger
from rlm.viewer.server import STATIC_DIR

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parent.parent
VISUALIZER = REPO / "visualizer"
SCRIPT = VISUALIZER / "e2e" / "view.mjs"
CHROMIUM = os.environ.get("RLM_CHROMIUM", "/usr/bin/chromium")
REFERENCE_LOG = REPO / "tests" / "fixtures" / "reference_logs" / "reference_child.jsonl"
FENCE = "```"


def _missing() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (scripts/browser_setup.sh)")
    if shutil.which("node") is None:
        missing.append("node on PATH")
    if not (VISUALIZER / "node_modules" / "playwright-core").is_dir():
        missing.append("visualizer/node_modules (scripts/browser_setup.sh)")
    if not (STATIC_DIR / "index.html").is_file():
        missing.append("the built app in rlm/viewer/static (scripts/build_visualizer.sh)")
    return missing


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    missing = _missing()
    if missing:
        message = "browser test needs: " + "; ".join(missing)
        if os.environ.get("RLM_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def turn(messages: list[Message]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


ROOT_TURNS = [
    "Let me look at the context first.\n"
    + repl("parts = context.split('|')\nprint(len(parts), 'parts:', parts)"),
    "Now each part goes to a child RLM, in parallel.\n"
    + repl(
        "summaries = rlm_query_batched(\n"
        "    [f'Summarise part {i}: {p}' for i, p in enumerate(parts)], contexts=parts\n"
        ")\n"
        "checks = llm_query_batched(['Check: ' + s for s in summaries])\n"
        "print(summaries)\n"
        "print(checks)"
    )
    + "\n"
    + repl("print(undefined_name)  # a block that fails"),
    repl("FINAL(' / '.join(summaries))"),
]
CHILD_TURNS = [
    repl("word = llm_query('Name the key word in: ' + context)\nprint(word)"),
    repl("FINAL(context.strip().lower())"),
]


def script(messages: list[Message]) -> str:
    """Root turns, child-RLM turns (their own system prompt) and plain sub-LM replies."""
    if messages[0]["role"] == "system":
        question = str(messages[1]["content"])
        turns = ROOT_TURNS if "Which parts" in question else CHILD_TURNS
        return turns[turn(messages)]
    return "ok: " + str(messages[-1]["content"])[:40]


def record_run(log_dir: Path) -> Path:
    """A real RLM run with recursion (depth 2), logged by RLMLogger."""
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root-model", "responses": script},
        other_backends=["scripted"],
        other_backend_kwargs=[
            {
                "model_name": "sub-model",
                "responses": script,
                "prices": {"input": 1.0, "output": 2.0},
            }
        ],
        max_depth=2,
        logger=RLMLogger(log_dir=log_dir),
    )
    with rlm:
        out = rlm.completion(
            "ALPHA part|BETA part|GAMMA part", root_prompt="Which parts does the text have?"
        )
    assert out.response == "alpha part / beta part / gamma part"
    return Path(out.metadata["log_file"])  # type: ignore[index]


def write_bad_logs(run: Path) -> None:
    lines = run.read_text().splitlines(keepends=True)
    # a garbage line 3 and a last line cut off mid-write
    damaged = [*lines[:2], "{this is not json\n", *lines[2:-1], lines[-1][:40]]
    (run.parent / "damaged.jsonl").write_text("".join(damaged))
    header = json.loads(lines[0])
    header["version"] = 99
    future = [json.dumps(header) + "\n", *lines[1:]]
    (run.parent / "future.jsonl").write_text("".join(future))


NEEDLE = "NEEDLE-IN-THE-HAYSTACK"


def write_big_log(path: Path, target_bytes: int = 50 * 2**20) -> int:
    """A ~50 MB trajectory in the documented format: hundreds of turns, ~20,000 sub-calls."""
    root = "b1g0000000000000"
    t = 1_700_000_000.0
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 18
    usage = {"input_tokens": 300, "output_tokens": 280, "cached_tokens": 0, "cache_write_tokens": 0}
    size = 0
    with path.open("w") as out:

        def put(record: dict[str, object]) -> None:
            nonlocal size
            line = json.dumps(record) + "\n"
            size += len(line)
            out.write(line)

        put(
            {
                "type": "header",
                "schema": "rlm-trajectory",
                "version": 1,
                "root_run_id": root,
                "created": "2023-11-14T22:13:20+00:00",
                "rlm_version": "0.1.0",
                "t": t,
            }
        )
        put(
            {
                "type": "run_start",
                "run_id": root,
                "parent_id": "",
                "depth": 0,
                "root_model": "root-model",
                "environment": "local",
                "root_prompt": "A big run",
                "context_type": "str",
                "context_total_length": 10,
                "context_lengths": [10],
                "settings": {},
                "t": t,
            }
        )
        turn_no = 0
        while size < target_bytes:
            turn_no += 1
            last = size + 200_000 >= target_bytes
            ids = []
            for j in range(50):
                sid = f"s{turn_no:05d}-{j:02d}"
                ids.append(sid)
                answer = f"{NEEDLE} " if last and j == 49 else ""
                put(
                    {
                        "type": "subcall",
                        "id": sid,
                        "parent_id": root,
                        "kind": "llm",
                        "depth": 1,
                        "model": "sub-model",
                        "prompt": f"chunk {turn_no}.{j}: {filler}",
                        "prompt_truncated": False,
                        "response": f"{answer}summary {j}: {filler}",
                        "response_truncated": False,
                        "response_chars": 1000,
                        "usage": {**usage, "cost": 0.0001},
                        "cost": 0.0001,
                        "started": t + 0.01 * j,
                        "ended": t + 0.01 * j + 0.4,
                        "duration": 0.4,
                        "error": None,
                    }
                )
            block = {
                "code": "out = llm_query_batched(chunks)",
                "stdout": "50 summaries",
                "stderr": "",
                "error": None,
                "timed_out": False,
                "execution_time": 0.9,
                "final_answer": None,
                "locals": {"out": "list"},
                "subcalls": ids,
            }
            put(
                {
                    "type": "iteration",
                    "run_id": root,
                    "depth": 0,
                    "iteration": turn_no,
                    "prompt": [{"role": "user", "content": "go on"}],
                    "response": "```repl ...```",
                    "code_blocks": [block],
                    "final_answer": None,
                    "iteration_time": 1.0,
                    "usage": {**usage, "cost": None},
                    "t": t + 1.0,
                }
            )
            t += 1.0
        put(
            {
                "type": "run_end",
                "run_id": root,
                "parent_id": "",
                "depth": 0,
                "answer": "done",
                "value": "done",
                "stop_reason": "final_answer",
                "error": None,
                "iterations": turn_no,
                "execution_time": float(turn_no),
                "usage": {},
                "totals": {
                    "calls": turn_no * 51,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cost": None,
                },
                "t": t,
            }
        )
    return turn_no * 50


class View:
    def __init__(self, log_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlm.cli", "view", str(log_dir), "--port", "0", "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.url = ""
        for _ in range(5):
            line = self.proc.stdout.readline()
            match = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            if match:
                self.url = match.group(1)
                break
        assert self.url, f"rlm view printed no URL: {self.proc.stderr and self.proc.stderr.read()}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def views(tmp_path: Path) -> Iterator[tuple[View, View, Path]]:
    logs = tmp_path / "logs"
    run = record_run(logs)
    write_bad_logs(run)
    write_big_log(logs / "big.jsonl")
    shutil.copyfile(REFERENCE_LOG, logs / REFERENCE_LOG.name)
    empty = tmp_path / "empty"
    empty.mkdir()
    full, none = View(logs), View(empty)
    try:
        yield full, none, run
    finally:
        full.close()
        none.close()


def test_visualizer_shows_a_recorded_run(views: tuple[View, View, Path], tmp_path: Path) -> None:
    full, empty, run = views
    screenshot = tmp_path / "visualizer-run.png"
    result = subprocess.run(
        [
            "node",
            str(SCRIPT),
            "--url",
            full.url,
            "--empty-url",
            empty.url,
            "--run",
            run.name,
            "--screenshot",
            str(screenshot),
            "--big",
            "big.jsonl",
            "--local-file",
            str(run),
            "--reference",
            REFERENCE_LOG.name,
            "--chromium",
            CHROMIUM,
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=VISUALIZER,
    )
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    assert result.returncode == 0, f"{report.get('error')}\n{result.stderr[-3000:]}"
    assert report["ok"] is True

    # what the browser showed, checked here too
    assert "alpha part / beta part / gamma part" in report["runRow"]
    assert sum("Child run · depth 1" in r for r in report["treeRows"]) == 3
    assert any("Name the key word in: GAMMA part" in r for r in report["treeRows"])
    assert report["timelineBars"] >= 20
    assert "rlm_query_batched" in report["code"]
    assert report["highlighted"] > 0
    assert "did not parse (line 3)" in report["damagedBanner"]
    assert "version 99" in report["futureMessage"]
    assert "No trajectory logs" in report["emptyMessage"]
    assert report["bigTreeDom"] < 200 and report["bigTimelineDom"] < 200  # virtualised
    assert NEEDLE in report["bigLast"]
    assert "alpha part / beta part / gamma part" in report["localAnswer"]
    # a log the reference implementation wrote opens, marked as such
    assert "written by the reference implementation" in report["referenceBanner"]
    assert any("Child run · depth 1" in r for r in report["referenceTree"])
    assert "rlm_query('Count the words in: alpha beta gamma')" in report["referenceCode"]
    assert "the child said: three" in report["referenceAnswer"]

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    keep = os.environ.get("RLM_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in tmp_path.glob("visualizer-run*.png"):
            shutil.copy(shot, Path(keep) / shot.name)
    print(f"screenshot: {screenshot}; 50 MB log loaded in {report['bigLoadMs']} ms")
