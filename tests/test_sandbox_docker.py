"""DockerREPL specifics, against a real engine: the container's hardening, no network, the
channel over the attached stdio, cleanup of containers, and timings (printed, not asserted).

Needs the engine and the image from scripts/docker_setup.sh; skipped without them unless
RLM_REQUIRE_DOCKER=1, in which case their absence fails the tests.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_kinds import DAEMON

from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message
from rlm.environments.docker import (
    DockerREPL,
    docker_client,
    docker_unavailable_reason,
    sandbox_containers,
)
from rlm.environments.local import LocalREPL
from rlm.errors import SandboxError

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {reason}")
        pytest.skip(f"docker unavailable: {reason}")


class FastLM(BaseLM):
    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        return LMResponse(text="ok", model=self.model_name)


@pytest.fixture(scope="module")
def handler(engine: None) -> Iterator[LMHandler]:
    lm_handler = LMHandler(FastLM("fast", max_retries=0))
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


@pytest.fixture(scope="module")
def env(handler: LMHandler) -> Iterator[DockerREPL]:
    session = handler.open_session()
    environment = DockerREPL(handler=handler.endpoint(session), timeout=60)
    yield environment
    environment.cleanup()


def run(environment: Any, code: str) -> str:
    result = environment.execute(code)
    assert result.error is None, result.stderr
    return str(result.stdout)


def test_container_is_started_hardened(env: DockerREPL) -> None:
    client = docker_client()
    try:
        attrs = client.containers.get(env.container_id).attrs
    finally:
        client.close()
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 256 and host["Memory"] > 0 and host["NanoCpus"] == 10**9
    assert host["LogConfig"]["Type"] == "none"
    assert config["User"] == "1000:1000"
    assert env.channel_token not in " ".join(config["Cmd"])
    assert {m["Destination"]: m["RW"] for m in attrs["Mounts"]} == {
        "/opt/rlm": False,
        "/rlm/stage": False,
    }


def test_inside_the_container_only_loopback_and_tmp_are_there(
    env: DockerREPL, handler: LMHandler
) -> None:
    assert handler.address is not None
    port = handler.address[1]
    out = run(
        env,
        "import os, socket\n"
        "print(os.getuid(), sorted(os.listdir('/sys/class/net')))\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        f"print(s.connect_ex(('127.0.0.1', {port})) != 0)\n"  # the host's handler: not here
        "open('/tmp/scratch', 'w').write('ok')\n"
        "for path in ('/opt/rlm/x', '/etc/x', '/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)",
    )
    lines = out.splitlines()
    assert lines[0] == "1000 ['lo']"
    assert lines[1] == "True"
    assert lines[2:] == ["OSError", "OSError", "OSError"]


def test_timings_warm_cell_llm_query_and_context_transfer(
    env: DockerREPL, handler: LMHandler
) -> None:
    for _ in range(5):
        run(env, "1")
    samples = []
    for _ in range(50):
        started = time.perf_counter()
        run(env, "1")
        samples.append(time.perf_counter() - started)
    warm = statistics.median(samples)

    def llm_cost(environment: Any) -> float:
        code = "import time\nt = time.perf_counter()\nfor _ in range(50):\n    llm_query('x')\n"
        code += "print((time.perf_counter() - t) / 50)"
        return float(run(environment, code))

    session = handler.open_session()
    local = LocalREPL(handler=handler.endpoint(session))
    try:
        llm_query_local = statistics.median(llm_cost(local) for _ in range(3))
    finally:
        local.cleanup()
    llm_query_docker = statistics.median(llm_cost(env) for _ in range(3))

    big = ("ctx \" ' \\ \x00 é 中 🙂\n" * 5_000_000)[:100_000_000]
    started = time.perf_counter()
    env.load_context(big, 3)
    transfer = time.perf_counter() - started
    digest = hashlib.sha256(big.encode()).hexdigest()
    assert run(env, "import hashlib\nhashlib.sha256(context_3.encode()).hexdigest()") == (
        f"'{digest}'\n"
    )
    env.load_context("", 3)
    print(
        f"\n[docker] warm cell round trip {warm * 1000:.2f} ms (median of 50); "
        f"llm_query {llm_query_docker * 1000:.2f} ms vs local {llm_query_local * 1000:.2f} ms "
        f"(+{(llm_query_docker - llm_query_local) * 1000:.2f} ms); "
        f"100 MB context loaded in {transfer:.2f} s"
    )


def test_a_daemon_that_left_the_group_is_killed_when_the_cell_ends(env: DockerREPL) -> None:
    started = env.execute(DAEMON + "import os\nprint(os.getsid(dm_pid) != os.getsid(0))")
    assert started.error is None, started.stderr
    assert started.stdout.split()[1:] == ["True"]  # in a session (and group) of its own
    assert "process(es) the cell left running were killed]" in started.stderr
    state = run(
        env,
        "import pathlib\n"
        "dm_status = pathlib.Path(f'/proc/{dm_pid}/status')\n"
        "print('gone' if not dm_status.exists() or 'State:\\tZ' in dm_status.read_text()"
        " else 'alive')",
    )
    assert state.split() == ["gone"]


def test_missing_image_is_a_sandbox_error_with_the_fix() -> None:
    with pytest.raises(SandboxError, match=r"docker_setup\.sh"):
        DockerREPL(image="rlm-no-such-image:none")


def test_swallowed_timeout_kills_and_removes_the_container() -> None:
    environment = DockerREPL(timeout=1, kill_grace=1)
    container = environment.container_id
    try:
        code = (
            "while True:\n"
            "    try:\n"
            "        while True:\n"
            "            pass\n"
            "    except BaseException:\n"
            "        pass"
        )
        with pytest.raises(SandboxError, match="did not stop within its timeout"):
            environment.execute(code)
        assert container not in sandbox_containers(host_pid=os.getpid())
    finally:
        environment.cleanup()


def test_cleanup_removes_the_container_even_when_unreferenced() -> None:
    environment = DockerREPL(timeout=10)
    container = environment.container_id
    assert container in sandbox_containers(host_pid=os.getpid())
    del environment  # the weakref finalizer is the backstop
    import gc

    gc.collect()
    assert container not in sandbox_containers(host_pid=os.getpid())


class _RacingClient:
    """A client whose containers vanish between listing and inspecting (auto-removal): the
    high-level list, which inspects each one, fails the way the SDK does."""

    def __init__(self) -> None:
        import docker

        class Api:
            def containers(self, **kwargs: Any) -> list[dict[str, Any]]:
                assert kwargs["filters"] == {"label": ["org.rlm.sandbox.host_pid=42"]}
                return [{"Id": "a" * 64}, {"Id": "b" * 64}]

        class Containers:
            def list(self, **kwargs: Any) -> list[Any]:
                raise docker.errors.NotFound("No such container: " + "a" * 64)

        self.api = Api()
        self.containers = Containers()


def test_listing_sandboxes_does_not_race_with_auto_removal() -> None:
    assert sandbox_containers(_RacingClient(), host_pid=42) == ["a" * 64, "b" * 64]


def test_listing_sandboxes_while_containers_are_removed() -> None:
    environments = [DockerREPL(timeout=10) for _ in range(2)]
    ids = {environment.container_id for environment in environments}
    assert ids <= set(sandbox_containers(host_pid=os.getpid()))
    import threading

    def remove_all() -> None:
        for environment in environments:
            environment.cleanup()

    removing = threading.Thread(target=remove_all)
    removing.start()
    while removing.is_alive():
        sandbox_containers(host_pid=os.getpid())  # never NotFound for a vanishing container
    removing.join()
    assert not ids & set(sandbox_containers(host_pid=os.getpid()))
