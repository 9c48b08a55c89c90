"""`rlm serve` as its users meet it: a real server process, the official openai SDK (and raw
HTTP where the SDK hides what is on the wire), and the provider simulator as the model.

The simulator's reply function plays the root model; the question in the first root turn says
which scenario a request is (see `reply`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rlm.testing import ProviderSimulator, SimRequest

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-serve-key"
CONCURRENT = 20


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


class Model:
    """The root model's script, keyed on markers in the question, and what it observed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(CONCURRENT, timeout=120)
        self.in_flight = 0
        self.max_in_flight = 0
        self.root_turns: dict[str, int] = {}

    def reply(self, request: SimRequest) -> str:
        first = request.messages[0]["content"]
        if "Answer the following query" not in first and "No separate query" not in first:
            return "SUB:" + str(len(request.messages[-1]["content"]))  # an llm_query sub-call
        question = first.split("using the context: ", 1)[-1].split("\n\n")[0]
        with self.lock:
            self.root_turns[question] = self.root_turns.get(question, 0) + 1
        if match := re.search(r"OVERLAP-(\d+)", question):
            return self._overlapping(match.group(1))
        if "NEVER-ANSWER" in question:
            return repl("print('still looking')")
        if "SLEEP" in question:
            return repl("import time\ntime.sleep(600)")
        if "SUBCALL" in question:
            return repl("r = llm_query('x' * 4000)\nanswer['content'] = r\nanswer['ready'] = True")
        return repl(
            "answer['content'] = f'{type(context).__name__}:{len(context)}'\nanswer['ready'] = True"
        )

    def _overlapping(self, index: str) -> str:
        """Held until all CONCURRENT requests are inside the model at once: a server that ran
        them one by one would break the barrier (and the test) instead of answering."""
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.in_flight -= 1
        return repl(f"answer['content'] = 'answer {index}'\nanswer['ready'] = True")


class Server:
    def __init__(self, proc: subprocess.Popen[str], base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def client(self, key: str = KEY, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, **kwargs)

    def children(self) -> set[int]:
        """Processes whose parent is the server (its sandboxes)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                found.add(int(entry.name))
        return found

    def busy_children(self) -> set[int]:
        """The sandboxes running a cell that sleeps, not those the warm pool keeps waiting
        for a run: a thread of theirs sleeps in the kernel's nanosleep."""
        found = set()
        for pid in self.children():
            try:
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
                if any("nanosleep" in (task / "wchan").read_text() for task in tasks):
                    found.add(pid)
            except OSError:
                continue
        return found


def start_server(sim: ProviderSimulator, *args: str, key: str | None = KEY) -> Server:
    env = dict(os.environ, OPENAI_API_KEY="sk-simulated", PYTHONPATH=str(ROOT))
    env.pop("RLM_SERVE_API_KEY", None)
    if key is not None:
        env["RLM_SERVE_API_KEY"] = key
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlm.cli",
            "serve",
            "--model",
            "sim-model",
            "--port",
            "0",
            "--backend-arg",
            f"base_url={sim.openai_base_url}",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    if match is None:
        proc.kill()
        raise AssertionError(
            f"no URL printed: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    server = Server(proc, match.group(1))
    server.first_lines = [line, proc.stdout.readline() if key is None else ""]  # type: ignore[attr-defined]
    return server


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def model() -> Model:
    return Model()


@pytest.fixture(scope="module")
def sim(model: Model) -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply=model.reply) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def server(sim: ProviderSimulator, log_dir: Path) -> Iterator[Server]:
    srv = start_server(
        sim,
        "--max-iterations",
        "5",
        "--max-body-mb",
        "1",
        "--max-context-chars",
        "100000",
        "--log-dir",
        str(log_dir),
    )
    yield srv
    stop(srv)


# ----------------------------------------------------------------------- answers


def test_the_openai_sdk_gets_the_answer(server: Server, log_dir: Path) -> None:
    client = server.client()
    doc = "word " * 200
    result = client.chat.completions.create(
        model="rlm",
        messages=[
            {"role": "system", "content": doc},
            {"role": "user", "content": "How long is it?"},
        ],
        temperature=0.2,  # a sampling knob: accepted, ignored
    )
    # Default split: the messages before the last user message are the context (a list).
    assert result.choices[0].message.content == "list:1"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == "rlm"
    assert result.usage is not None and result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    info = result.model_extra["rlm"]  # type: ignore[index]
    assert info["stop_reason"] == "final_answer" and info["iterations"] == 1
    # Each request's trajectory is its own file in --log-dir.
    assert [p for p in log_dir.glob("*.jsonl") if info["run_id"] in p.name]


def test_a_lone_question_runs_on_an_empty_context(server: Server) -> None:
    result = server.client().chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "Hello?"}]
    )
    assert result.choices[0].message.content == "str:0"


def test_all_context_split_and_text_parts(server: Server) -> None:
    result = server.client().chat.completions.create(
        model="rlm",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "NO QUESTION HERE"},
        ],
        extra_body={"rlm": {"split": "all_context"}},
    )
    assert result.choices[0].message.content == "list:3"


def test_usage_sums_sub_calls(server: Server) -> None:
    result = server.client().chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "SUBCALL please"}]
    )
    assert result.choices[0].message.content == "SUB:4000"
    assert result.model_extra["rlm"]["lm_calls"] == 2  # type: ignore[index]
    assert result.usage is not None
    assert result.usage.prompt_tokens >= 1000 + 100  # the sub-call's 4000 chars + the root turn


def test_models_endpoint(server: Server) -> None:
    assert [m.id for m in server.client().models.list()] == ["rlm"]


# ----------------------------------------------------------------------- streaming


def test_streamed_answer_with_usage_and_opt_in_progress(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "SUBCALL streamed"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"rlm": {"progress": True}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "SUB:4000"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens >= 1100
    progress = [
        c.model_extra["rlm"]["progress"]
        for c in chunks
        if c.model_extra and "rlm" in c.model_extra and "progress" in c.model_extra["rlm"]
    ]  # type: ignore[index]
    kinds = [p["kind"] for p in progress]
    assert "iteration" in kinds and "subcall" in kinds


def test_stream_on_the_wire_progress_is_comments_then_done(server: Server) -> None:
    body = {
        "model": "rlm",
        "stream": True,
        "messages": [{"role": "user", "content": "SUBCALL raw"}],
    }
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    comments = [e for e in events if e.startswith(":")]
    assert any("iteration 1 (depth 0)" in c for c in comments)
    assert any("sub-call llm" in c for c in comments)
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    # Without the opt-in every data event is an ordinary chunk with one choice.
    assert all(len(d["choices"]) == 1 for d in data)
    assert events[-1] == "data: [DONE]"


# ----------------------------------------------------------------------- settings per request


def test_per_request_limits_apply_and_are_bounded(server: Server) -> None:
    client = server.client()
    result = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "NEVER-ANSWER"}],
        extra_body={"max_iterations": 2},
    )
    assert result.choices[0].finish_reason == "length"
    info = result.model_extra["rlm"]  # type: ignore[index]
    assert info["stop_reason"] == "max_iterations" and info["iterations"] == 2
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit of 5"):
        client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"max_iterations": 50},
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n": 2}, "'n' is not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "'tools' is not supported"),
        ({"logprobs": True}, "'logprobs' is not supported"),
        ({"frobnicate": 1}, "Unrecognized request argument supplied: frobnicate"),
        ({"rlm": {"max_dpeth": 2}}, "unknown rlm setting"),
        ({"max_depth": 0}, "max_depth must be >= 1"),
    ],
)
def test_parameters_it_cannot_honour_are_refused(
    server: Server, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=message) as caught:
        server.client().chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "x"}], extra_body=extra
        )
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        server.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )


# ----------------------------------------------------------------------- admission


def test_wrong_or_missing_key_is_401(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    response = httpx.post(f"{server.base_url}/chat/completions", json={}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_too_large_is_413(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.APIStatusError) as body_caught:  # over --max-body-mb 1
        client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "x" * 1_200_000}]
        )
    assert body_caught.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as context_caught:  # over --max-context-chars
        client.chat.completions.create(
            model="rlm",
            messages=[
                {"role": "system", "content": "y" * 150_000},
                {"role": "user", "content": "q"},
            ],
        )
    assert context_caught.value.status_code == 413
    assert context_caught.value.body["code"] == "context_too_large"  # type: ignore[index]


def test_generated_key_is_printed(sim: ProviderSimulator) -> None:
    srv = start_server(sim, key=None)
    try:
        printed = re.search(r"API key: (\S+)", srv.first_lines[1])  # type: ignore[attr-defined]
        assert printed is not None
        assert [m.id for m in srv.client(key=printed.group(1)).models.list()] == ["rlm"]
        with pytest.raises(openai.AuthenticationError):
            srv.client(key=KEY).models.list()
    finally:
        stop(srv)


# ----------------------------------------------------------------------- concurrency


def test_concurrent_requests_each_get_their_own_run(server: Server, model: Model) -> None:
    async def ask_all() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        async with client:
            results = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="rlm", messages=[{"role": "user", "content": f"OVERLAP-{i}"}]
                    )
                    for i in range(CONCURRENT)
                )
            )
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(ask_all())
    assert answers == [f"answer {i}" for i in range(CONCURRENT)]
    # Every run was inside the model at the same moment (the barrier let none go before).
    assert model.max_in_flight == CONCURRENT


# ----------------------------------------------------------------------- disconnects


@pytest.fixture(scope="module")
def process_server(sim: ProviderSimulator) -> Iterator[Server]:
    srv = start_server(sim, "--environment", "process")
    yield srv
    stop(srv)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "plain"])
def test_a_client_that_disconnects_cancels_its_run(
    process_server: Server, model: Model, streamed: bool
) -> None:
    srv = process_server
    question = f"SLEEP forever {'streamed' if streamed else 'plain'}"
    before = {line for line in srv.stderr_lines if "client disconnected" in line}
    client = srv.client(timeout=httpx.Timeout(120))
    if streamed:
        stream = client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": question}], stream=True
        )
        first = next(iter(stream))  # the role chunk: the run has started
        assert first.choices[0].delta.role == "assistant"
        close = stream.close
    else:  # a plain request on a raw socket, closed before the answer comes
        body = json.dumps({"model": "rlm", "messages": [{"role": "user", "content": question}]})
        url = httpx.URL(srv.base_url)
        sock = socket.create_connection((url.host, url.port))
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        close = sock.close
    _wait_for(lambda: model.root_turns.get(question), "the root turn")
    sandboxes = _wait_for(srv.busy_children, "a sandbox process running time.sleep(600)")
    close()  # the client goes away while the sandbox sleeps
    _wait_for(
        lambda: {line for line in srv.stderr_lines if "client disconnected" in line} - before,
        "the server to report the cancelled run",
    )
    _wait_for(lambda: not (srv.children() & sandboxes), "the sandbox to be gone")
    assert model.root_turns[question] == 1  # no further turn was asked for
    result = client.chat.completions.create(  # and the server still answers
        model="rlm", messages=[{"role": "user", "content": "after"}]
    )
    assert result.choices[0].message.content == "str:0"


def test_sigterm_stops_the_server_and_its_runs(sim: ProviderSimulator, model: Model) -> None:
    srv = start_server(sim, "--environment", "process")
    question = "SLEEP until SIGTERM"
    body = json.dumps({"model": "rlm", "messages": [{"role": "user", "content": question}]})
    url = httpx.URL(srv.base_url)
    with socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        _wait_for(lambda: model.root_turns.get(question), "the root turn")
        sandboxes = _wait_for(srv.children, "a sandbox process")
        srv.proc.terminate()
        srv.proc.wait(timeout=60)
    for pid in sandboxes:
        _wait_for(lambda pid=pid: not _alive(pid), f"sandbox {pid} to end")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_failed_run_is_502_plain_and_an_error_event_streamed(
    server: Server, sim: ProviderSimulator
) -> None:
    client = server.client()
    sim.fail_next("400")  # the provider refuses the root turn: the run cannot answer
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "rlm_run_failed"  # type: ignore[index]
    sim.fail_next("400")
    stream = client.chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "y"}], stream=True
    )
    with pytest.raises(openai.APIError, match="the RLM run failed"):
        list(stream)
