"""The examples run offline and print what they promise (they are documentation that runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_answers_offline() -> None:
    out = run_example("quickstart.py")
    assert "answer: 1666" in out and "stop reason: final_answer" in out


def test_offline_testing_example_passes() -> None:
    assert "pipeline test passed: positive" in run_example("offline_testing.py")


def test_recursion_and_tools_example() -> None:
    out = run_example("recursion_and_tools.py")
    assert "answer: ['Paris', 'Tokyo', 'Lima']" in out
    assert out.count("run started at depth 1") == 3


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_docstring_with_its_command(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"python examples/{name}" in text
