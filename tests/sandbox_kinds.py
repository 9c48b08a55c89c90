"""Shared by the environment test files: which kinds run, and what a missing Docker engine means."""

from __future__ import annotations

import os

import pytest


def require_kind(kind: str) -> None:
    """Skip the docker cases when no engine is reachable, or fail if RLM_REQUIRE_DOCKER=1."""
    if kind != "docker":
        return
    from rlm.environments.docker import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {reason}")
        pytest.skip(f"docker unavailable: {reason}")
