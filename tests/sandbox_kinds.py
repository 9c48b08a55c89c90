"""Shared by the environment test files: which kinds run, what a missing Docker engine means,
and code for cells that several files run."""

from __future__ import annotations

import os
from typing import Any

import pytest

# The test kinds that are not environment names: the IPython kernel subprocess is
# environment="ipython" with kernel_mode="subprocess".
KIND_ENVIRONMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ipython-kernel": ("ipython", {"kernel_mode": "subprocess"}),
}


def environment_of(kind: str) -> tuple[str, dict[str, Any]]:
    """The environment name and the extra keyword arguments a test kind stands for."""
    name, kwargs = KIND_ENVIRONMENTS.get(kind, (kind, {}))
    return name, dict(kwargs)


def require_kind(kind: str) -> None:
    """Skip the docker cases when no engine is reachable, or fail if RLM_REQUIRE_DOCKER=1."""
    if kind.startswith("ipython"):
        pytest.importorskip("IPython")
        if kind == "ipython-kernel":
            pytest.importorskip("ipykernel")
            pytest.importorskip("jupyter_client")
        return
    if kind != "docker":
        return
    from rlm.environments.docker import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {reason}")
        pytest.skip(f"docker unavailable: {reason}")


def require_confinement() -> None:
    """Skip a test of the `process` sandbox's cgroup and uid pool where the machine cannot
    provide them (not root, no cgroups), or fail if RLM_REQUIRE_CONFINEMENT=1."""
    from rlm.environments.confine import ConfinementUnavailable, SandboxCgroup, UidLease

    try:
        SandboxCgroup.create(None, None).remove()
        UidLease.acquire().release()
    except ConfinementUnavailable as exc:
        if os.environ.get("RLM_REQUIRE_CONFINEMENT") == "1":
            pytest.fail(f"RLM_REQUIRE_CONFINEMENT=1 but the machine cannot confine: {exc}")
        pytest.skip(f"no cgroup or uid pool here: {exc}")


# Cell code that starts a daemon: a child leaves the worker's session and process group
# (setsid), forks the process that stays, and exits, so that one is an orphan in another group.
# Sets dm_pid and prints it.
DAEMON = (
    "import subprocess, sys\n"
    "dm_code = ('import os, time\\nos.setsid()\\nif os.fork():\\n    os._exit(0)\\n'\n"
    "           'print(os.getpid(), flush=True)\\ntime.sleep(300)')\n"
    "dm_starter = subprocess.Popen([sys.executable, '-c', dm_code], stdout=subprocess.PIPE)\n"
    "dm_pid = int(dm_starter.stdout.readline())\n"
    "dm_starter.wait()\n"
    "print(dm_pid)\n"
)
