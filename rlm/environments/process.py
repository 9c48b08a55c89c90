"""`ProcessREPL` (environment="process"): the sandbox runtime in a child process on this machine.

The worker runs in its own session and process group (`start_new_session`), in a per-session
temp dir, with an environment built from an allowlist (no provider keys), and sets its own
rlimits before any cell runs: address space (`memory_mb`), CPU time, open files, file size,
no core dumps, and `max_processes` (RLIMIT_NPROC). Processes a cell leaves running are killed
by the worker when the cell ends; on timeout and at cleanup everything the worker started and
the whole process group are killed, and so they are when the host dies (the worker notices its
stdin closing). The worker adopts orphaned descendants (a child subreaper), so a process that
calls setsid() to leave the group, or whose parent exited, is still found and killed.

When the host runs as root the worker runs as `nobody` (`user="auto"`): RLIMIT_NPROC does not
bind for root, and an unprivileged worker cannot signal the host or write its files. Contexts
are staged in a host-owned directory the worker can read but not change.

Not a strong boundary: the worker can read world-readable files and reach the network. Use
"docker" (or a cloud sandbox) for untrusted code.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from rlm.environments.isolated import IsolatedEnv, OutputTail, Transport, scrubbed_env
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_dir
from rlm.runtime.procgroup import end_tree
from rlm.runtime.worker import write_all


class ProcessTransport(Transport):
    """The worker's stdin/stdout pipes; kill = SIGKILL to its whole process group."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            bufsize=0,
            close_fds=True,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
        self.pgid = self.proc.pid  # the session leader's pid is its process group id
        threading.Thread(target=self._drain_stderr, name="rlm-process-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._tail.add(chunk)

    def write(self, data: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is None or self._killed:
            raise BrokenPipeError("the worker process is gone")
        write_all(stdin.fileno(), data)

    def read(self) -> bytes:
        stdout = self.proc.stdout
        if stdout is None:
            return b""
        try:
            return os.read(stdout.fileno(), 1 << 20)
        except OSError:
            return b""

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        # First what the worker started, even processes that left its group (it adopts
        # orphans, so they are still its descendants while it lives), then the group. Signal
        # the group before reaping the leader: until it is reaped its pid (the group id)
        # cannot be reused, so the signal cannot reach an unrelated process.
        end_tree(self.proc.pid, self.pgid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def describe_exit(self) -> str:
        code = self.proc.returncode
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=1)
        if code is None:
            return ""
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the worker was killed by {signal.Signals(-code).name}"
        return f"the worker exited with status {code}"

    def diagnostics(self) -> str:
        return self._tail.text()


def _runnable_by_others(path: str) -> bool:
    """Whether a user with no special rights can execute `path` (every directory searchable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


def _python_candidates() -> list[str]:
    found: list[str] = []
    base = getattr(sys, "_base_executable", None)
    for candidate in (base, sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and os.path.exists(candidate) and candidate not in found:
            found.append(candidate)
    return found


class ProcessREPL(IsolatedEnv):
    """The sandbox runtime in a local child process with rlimits (see the module docstring).

    Extra keywords: `python` (interpreter path; default: this Python's base interpreter, or
    the first python3 the sandbox user may run), `user` ("auto": `nobody` when the host is
    root, else the host's own user; a name or uid; None: never switch users).
    """

    name: ClassVar[str] = "process"
    extra_kwargs: ClassVar[tuple[str, ...]] = ("python", "user")
    default_max_processes: ClassVar[int | None] = 128
    default_start_timeout: ClassVar[float] = 30.0

    def __init__(self, *, python: str | None = None, user: Any = "auto", **kwargs: Any) -> None:
        self._python_option = python
        self._user_option = user
        self._stage_dir: Path | None = None
        self.pgid: int | None = None
        super().__init__(**kwargs)

    def _resolve_user(self) -> tuple[int | None, int | None]:
        option = self._user_option
        if option is None:
            return None, None
        if option == "auto":
            if os.geteuid() != 0:
                return None, None
            option = "nobody"
        if os.geteuid() != 0:
            raise ConfigurationError("user= needs the host to run as root; pass user=None")
        try:
            entry = pwd.getpwuid(option) if isinstance(option, int) else pwd.getpwnam(str(option))
        except KeyError:
            if isinstance(option, int) and not isinstance(option, bool):
                return option, option
            raise ConfigurationError(f"no such user: {option!r}") from None
        if entry.pw_uid == 0:
            raise ConfigurationError("user= must name an unprivileged user, not root")
        return entry.pw_uid, entry.pw_gid

    def _pick_python(self, uid: int | None) -> str:
        if self._python_option is not None:
            return self._python_option
        for candidate in _python_candidates():
            if uid is None or _runnable_by_others(candidate):
                return candidate
        raise ConfigurationError(
            "no Python interpreter the sandbox user may run was found; pass python='/path' "
            "(world-executable) or user=None"
        )

    def _launch(self) -> Transport:
        uid, gid = self._resolve_user()
        root = self.make_host_dir("rlm-process-")
        work, stage = root / "work", root / "stage"
        work.mkdir()
        stage.mkdir()
        os.chmod(root, 0o711)
        os.chmod(stage, 0o711)  # the worker may read a staged file by name, never change it
        if uid is not None and gid is not None:
            os.chown(work, uid, gid)
        os.chmod(work, 0o700)
        self._stage_dir = stage
        env = scrubbed_env({**self.worker_env(), "PYTHONPATH": str(bundle_dir())}, home=str(work))
        argv = [self._pick_python(uid), "-s", "-m", WORKER_MODULE]
        try:
            transport = ProcessTransport(argv, env=env, cwd=str(work), user=uid, group=gid)
        except OSError as exc:
            raise SandboxError(f"could not start the worker process {argv[0]!r}: {exc}") from exc
        self.pgid = transport.pgid
        return transport

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        assert self._stage_dir is not None
        path = self._stage_dir / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the sandbox user must read it
            write_all(fd, data)
        finally:
            os.close(fd)
        return str(path), False

    def _unstage(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
