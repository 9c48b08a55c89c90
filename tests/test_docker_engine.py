"""The real Docker engine and the sandbox image that scripts/docker_setup.sh provides.

Skipped when no engine answers, unless RLM_REQUIRE_DOCKER is set (CI sets it): then a missing
engine or image is a failure, so a broken setup script cannot pass as "all skipped".
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

IMAGE = os.environ.get("RLM_SANDBOX_IMAGE", "rlm-sandbox:latest")
SANDBOX_UID = 1000
MEMORY_BYTES = 256 * 1024 * 1024
PIDS_LIMIT = 64
# The flags the Docker environment runs its containers with.
HARDENED = [
    "--network",
    "none",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--user",
    f"{SANDBOX_UID}:{SANDBOX_UID}",
    "--memory",
    "256m",
    "--pids-limit",
    str(PIDS_LIMIT),
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]
# TEST-NET-1 (RFC 5737): never routed, so even a broken sandbox sends nothing to a real host.
OUTSIDE_ADDR = "192.0.2.1"

# Runs inside the container; prints one JSON object describing what the sandbox can do.
PROBE = r"""
import errno, json, os, socket, sys, threading

def connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
    finally:
        s.close()

def read(*paths):
    for p in paths:
        try:
            with open(p) as f:
                return f.read().strip()
        except OSError:
            pass
    return None

def can_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
stop = threading.Event()
started = 0
for _ in range(100):
    t = threading.Thread(target=stop.wait, daemon=True)
    try:
        t.start()
    except RuntimeError:
        break
    started += 1
stop.set()

print(json.dumps({
    "python": sys.version_info[:2],
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "outside": connect(sys.argv[1], 53),
    "host_loopback": connect("127.0.0.1", int(sys.argv[2])),
    "root_writable": can_write("/probe"),
    "tmp_writable": can_write("/tmp/probe"),
    "cap_eff": int(status["CapEff"].strip(), 16),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "memory_limit": read("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                         "/sys/fs/cgroup/memory.max"),
    "pids_limit": read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "threads_started": started,
}))
"""


def _docker(
    *args: str, stdin: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def _require_docker() -> bool:
    return os.environ.get("RLM_REQUIRE_DOCKER", "") not in ("", "0")


def _unavailable(reason: str) -> None:
    message = f"{reason} (run scripts/docker_setup.sh as root)"
    if _require_docker():
        pytest.fail(f"RLM_REQUIRE_DOCKER is set but {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def engine() -> None:
    """Skip (or fail under RLM_REQUIRE_DOCKER) unless `docker info` answers."""
    if shutil.which("docker") is None:
        _unavailable("no docker CLI on PATH")
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except subprocess.TimeoutExpired:
        _unavailable("`docker info` timed out")
    if info.returncode != 0:
        _unavailable(f"`docker info` failed: {info.stderr.strip()[:300]}")


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    if _docker("image", "inspect", IMAGE).returncode != 0:
        _unavailable(f"image {IMAGE} is missing")
    return IMAGE


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's loopback: the sandbox must not be able to reach it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def probe(image: str, host_listener: int) -> dict[str, Any]:
    proc = _docker(
        "run", "--rm", *HARDENED, image,
        "python3", "-c", PROBE, OUTSIDE_ADDR, str(host_listener),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_image_runs_python3_by_default(image: str) -> None:
    inspect = _docker("image", "inspect", "--format", "{{json .Config.Cmd}}", image)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout) == ["python3"]
    # No command given: the image's default (python3) reads the program from stdin.
    run = _docker("run", "--rm", "-i", "--network", "none", image, stdin="print(6 * 7)\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "42\n"


def test_hardened_container_runs_python_and_prints(probe: dict[str, Any]) -> None:
    assert probe["python"][0] == 3


def test_runs_as_non_root(probe: dict[str, Any]) -> None:
    assert probe["uid"] == probe["euid"] == SANDBOX_UID
    assert probe["gid"] == SANDBOX_UID
    assert probe["cap_eff"] == 0
    assert probe["no_new_privs"] == "1"


def test_network_is_unreachable(probe: dict[str, Any]) -> None:
    assert probe["interfaces"] == ["lo"]
    assert probe["outside"] == errno.errorcode[errno.ENETUNREACH]
    # 127.0.0.1 inside is the container's own loopback, not the host's.
    assert probe["host_loopback"] == errno.errorcode[errno.ECONNREFUSED]


def test_filesystem_is_read_only_except_tmp(probe: dict[str, Any]) -> None:
    assert probe["root_writable"] is False
    assert probe["tmp_writable"] is True


def test_limits_are_enforced(probe: dict[str, Any]) -> None:
    assert probe["memory_limit"] == str(MEMORY_BYTES)
    assert probe["pids_limit"] == str(PIDS_LIMIT)
    assert probe["threads_started"] < PIDS_LIMIT


def test_memory_limit_kills_a_hog(image: str) -> None:
    proc = _docker(
        "run", "--rm", "--network", "none", "--memory", "64m", "--memory-swap", "64m", image,
        "python3", "-c", "b = b'x' * (200 * 1024 * 1024); print('allocated')",
    )  # fmt: skip
    assert "allocated" not in proc.stdout
    assert proc.returncode != 0
