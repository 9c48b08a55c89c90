"""The reference's `rlm.environments.docker_repl`: `DockerREPL` with its constructor arguments.

Our Docker sandbox (`rlm.environments.docker`) underneath: the `rlm-sandbox` image by default
(the reference's default `python:3.11-slim` works too when given as `image`), no network, and
sub-calls relayed over the worker's channel rather than an HTTP proxy on the host.
"""

from __future__ import annotations

from typing import Any

from rlm.environments import docker
from rlm.environments._reference import ReferenceIsolatedREPL

__all__ = ["DockerREPL"]


class DockerREPL(ReferenceIsolatedREPL, docker.DockerREPL):  # type: ignore[misc]  # add_history returns the index
    """`DockerREPL(image=None, lm_handler_address=None, context_payload=None, ...)`."""

    def __init__(self, image: str | None = None, **kwargs: Any) -> None:
        if image is not None:
            kwargs["image"] = image
        super().__init__(**kwargs)
