"""`DockerREPL` (environment="docker"): the sandbox runtime in a container (docker SDK).

One container per environment (per completion, or per persistent session), reused across
cells. The worker talks to the host over the container's own stdin/stdout, attached through
the Docker API, so the container needs no network: it runs with `--network none`, a read-only
root with a small writable tmpfs at /tmp, memory/CPU/pids limits, all capabilities dropped,
`no-new-privileges`, as uid 1000 (the rlm image's `sandbox` user), and a tiny init as PID 1
that reaps orphans. The image needs only python3: the runtime is bind-mounted read-only at
/opt/rlm and nothing is installed at start-up.

Contexts larger than a frame are written once to a host file in a directory bind-mounted
read-only into the container, and read once by the worker: no per-cell transfer.

The default image is `rlm-sandbox:latest`, built by scripts/docker_setup.sh (Debian minbase
with python3); any image with python3 >= 3.11 works: `environment_kwargs={"image": ...}`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
from typing import Any, ClassVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import HostStage, SandboxTransport, keyword_names, quietly
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_dir
from rlm.runtime.channel import write_all

DEFAULT_IMAGE = "rlm-sandbox:latest"
IMAGE_ENV = "RLM_SANDBOX_IMAGE"
LABEL = "org.rlm.sandbox"
_BUNDLE_MOUNT = "/opt/rlm"
_STAGE_MOUNT = "/rlm/stage"
_STREAM_HEADER = struct.Struct(">BxxxL")  # docker's multiplexing: stream id, 3 pad, length


def default_image() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def docker_client(timeout: float = 60.0) -> Any:
    """A docker SDK client for the local engine, or SandboxError saying why there is none."""
    docker = require("docker", extra="docker")
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise SandboxError(f"no Docker engine is reachable: {exc}") from exc
    return client


class DockerTransport(SandboxTransport):
    """The container's attached stdin/stdout stream; kill = force-remove the container."""

    def __init__(self, client: Any, container: Any, sock: Any) -> None:
        super().__init__()
        self._client = client
        self._container = container
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._sock.settimeout(None)  # the SDK's HTTP timeout must not end a quiet session
        self._keep = sock  # the SDK object owns the HTTP response; keep it alive
        self._buf = bytearray()
        self._state: dict[str, Any] | None = None
        self.container_id: str = container.id

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError("the container is gone")
        write_all(self._sock.fileno(), data)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                return False
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read(self) -> bytes:
        """The next stdout payload; stderr payloads go to the diagnostics tail."""
        while True:
            if not self._fill(_STREAM_HEADER.size):
                return b""
            stream, length = _STREAM_HEADER.unpack_from(self._buf)
            if not self._fill(_STREAM_HEADER.size + length):
                return b""
            payload = bytes(self._buf[_STREAM_HEADER.size : _STREAM_HEADER.size + length])
            del self._buf[: _STREAM_HEADER.size + length]
            if stream == 1:
                if payload:
                    return payload
            elif stream == 2:
                self._tail.add(payload)

    def _inspect(self) -> dict[str, Any] | None:
        if self._state is None:
            with contextlib.suppress(Exception):
                self._container.reload()
                self._state = dict(self._container.attrs.get("State") or {})
        return self._state

    def _end(self) -> None:
        quietly(
            lambda: self._container.remove(force=True),
            lambda: self._sock.shutdown(socket.SHUT_RDWR),
            self._sock.close,
            self._client.close,
        )

    def describe_exit(self) -> str:
        if self._killed and self._state is None:
            return ""
        state = self._inspect()
        if not state:
            return ""
        if state.get("OOMKilled"):
            return "the container was killed for exceeding its memory limit"
        if state.get("Running"):
            return "the container is still running"
        return f"the container exited with status {state.get('ExitCode')}"


class DockerREPL(IsolatedEnv):
    """The sandbox runtime in a hardened container (see the module docstring).

    Extra keywords: `image` (default `rlm-sandbox:latest`, or $RLM_SANDBOX_IMAGE), `cpus`
    (1.0), `pids_limit` (256), `tmpfs_mb` (256, the writable /tmp), `user` ("1000:1000"),
    `init` (True: docker-init as PID 1), `python` ("python3" in the image's PATH).
    The container's memory limit is `memory_mb` + `tmpfs_mb` + 256 MiB.
    """

    name: ClassVar[str] = "docker"
    default_start_timeout: ClassVar[float] = 60.0
    pool_by_default: ClassVar[bool] = True
    end_in_background: ClassVar[bool] = True  # its files die with the container
    reaper_scope = "pidns"  # the container's own PID namespace: every process but init is ours

    def __init__(
        self,
        *,
        image: str | None = None,
        cpus: float = 1.0,
        pids_limit: int = 256,
        tmpfs_mb: int = 256,
        user: str = "1000:1000",
        init: bool = True,
        python: str = "python3",
        **kwargs: Any,
    ) -> None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
            raise ConfigurationError(f"cpus must be a positive number, got {cpus!r}")
        for key, value in (("pids_limit", pids_limit), ("tmpfs_mb", tmpfs_mb)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"{key} must be a positive integer, got {value!r}")
        self.image = image or default_image()
        self.cpus = float(cpus)
        self.pids_limit = pids_limit
        self.tmpfs_mb = tmpfs_mb
        self.user = user
        self.init = init
        self.python = python
        self.container_id: str | None = None
        self._staging: HostStage | None = None
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    def _launch(self) -> Transport:
        docker = require("docker", extra="docker")
        client = docker_client()
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            client.close()
            raise SandboxError(
                f"the Docker image {self.image!r} is not present; build it with "
                "scripts/docker_setup.sh or pass environment_kwargs={'image': ...}"
            ) from None
        except docker.errors.DockerException as exc:
            client.close()
            raise SandboxError(f"Docker failed: {exc}") from exc
        stage = self.make_host_dir("rlm-docker-")
        self._staging = HostStage(stage)
        memory = (self.memory_mb or 1024) + self.tmpfs_mb + 256
        environment = {
            **self.worker_env(),
            "PYTHONPATH": _BUNDLE_MOUNT,
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        container = None
        api = client.api
        try:
            host_config = api.create_host_config(
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_mb}m,mode=1777"},
                mem_limit=f"{memory}m",
                memswap_limit=f"{memory}m",
                nano_cpus=int(self.cpus * 1e9),
                pids_limit=self.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=self.init,
                # No log driver: the channel is not a log, and json-file would write every
                # line of it to the host's disk (and slow bulk transfers down 20x).
                log_config={"Type": "none", "Config": {}},
                binds={
                    str(bundle_dir()): {"bind": _BUNDLE_MOUNT, "mode": "ro"},
                    str(stage): {"bind": _STAGE_MOUNT, "mode": "ro"},
                },
                # If the host dies without cleaning up, the attach stream closes, stdin
                # reaches EOF (stdin_once), the worker exits and the engine removes it.
                auto_remove=True,
            )
            created = api.create_container(
                self.image,
                command=[self.python, "-s", "-m", WORKER_MODULE],
                name=f"rlm-sandbox-{secrets.token_hex(6)}",
                labels={LABEL: "1", f"{LABEL}.host_pid": str(os.getpid())},
                stdin_open=True,  # with detach=False the SDK also sets StdinOnce (see above)
                tty=False,
                user=self.user,
                working_dir="/tmp",
                environment=environment,
                host_config=host_config,
            )
            container = client.containers.get(created["Id"])
            sock = container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
        except Exception as exc:  # SDK errors of any kind: translated here, at the boundary
            if container is not None:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
            client.close()
            raise SandboxError(f"could not start the sandbox container: {exc}") from exc
        self.container_id = container.id
        return DockerTransport(client, container, sock)

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        assert self._staging is not None
        self._staging.write(name, data)
        return f"{_STAGE_MOUNT}/{name}", False

    def _unstage(self, path: str) -> None:
        assert self._staging is not None
        self._staging.remove(path)


def sandbox_containers(client: Any | None = None, *, host_pid: int | None = None) -> list[str]:
    """Ids of rlm sandbox containers that exist now, optionally only those started by the
    process `host_pid` (for tests and cleanup tools)."""
    docker = require("docker", extra="docker")
    own = client is None
    client = client or docker_client()
    labels = [LABEL] if host_pid is None else [f"{LABEL}.host_pid={host_pid}"]
    try:
        # The low-level list: the high-level one inspects each container in a second request,
        # which fails (NotFound) when the container is auto-removed in between.
        found = client.api.containers(all=True, filters={"label": labels})
    except docker.errors.DockerException as exc:
        raise SandboxError(f"listing the sandbox containers failed: {exc}") from exc
    finally:
        if own:
            client.close()
    return [str(c["Id"]) for c in found]


def docker_unavailable_reason(image: str | None = None) -> str | None:
    """Why the docker environment cannot run here (no SDK, no engine, no image), or None."""
    try:
        docker = require("docker", extra="docker")
        client = docker_client(timeout=10)
    except (SandboxError, ConfigurationError) as exc:
        return str(exc)
    try:
        client.images.get(image or default_image())
    except docker.errors.DockerException as exc:
        return f"the sandbox image {image or default_image()!r} is not available: {exc}"
    finally:
        client.close()
    return None
