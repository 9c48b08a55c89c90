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
import logging
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

from rlm.environments.confine import ConfinementUnavailable, SandboxCgroup, UidLease
from rlm.environments.isolated import IsolatedEnv
from rlm.environments.sandbox_base import Transport, scrubbed_env
from rlm.environments.sandbox_parts import HostStage, SandboxTransport, keyword_names
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_dir
from rlm.runtime.channel import write_all
from rlm.runtime.procgroup import end_tree


class ProcessTransport(SandboxTransport):
    """The worker's stdin/stdout pipes; kill = SIGKILL to its whole process group."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        user: int | None = None,
        group: int | None = None,
        cgroup: SandboxCgroup | None = None,
        lease: UidLease | None = None,
    ) -> None:
        super().__init__()
        self.cgroup = cgroup
        self.lease = lease
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
        if cgroup is not None:
            # Before the worker has read its hello, so before any code of the sandbox runs
            # and before it starts a single process: all of them are born inside.
            try:
                cgroup.add(self.proc.pid)
            except OSError as exc:
                self.kill()
                raise SandboxError(f"could not move the worker into its cgroup: {exc}") from exc
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

    def _end(self) -> None:
        if self.cgroup is not None:
            # Everything in the sandbox's cgroup, however it left the group and the tree.
            self.cgroup.kill()
        else:
            # What the worker started, even processes that left its group (it adopts orphans,
            # so they are its descendants while it lives, unless a cell cleared that flag),
            # then the group. Signal the group before reaping the leader: until it is reaped
            # its pid (the group id) cannot be reused, so the signal reaches no other process.
            end_tree(self.proc.pid, self.pgid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.lease is not None:  # last: its files are removed once nothing runs as it
            self.lease.release()

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


VENV = "venv"
CONFINE_CHOICES = ("auto", "required", "off")
_TASK_HEADROOM = 32  # the worker's own threads, on top of max_processes, in the cgroup's pids.max
_MEMORY_HEADROOM_MB = 256  # page cache, /dev/shm, the worker itself: the cgroup's extra room

logger = logging.getLogger(__name__)
_warned: set[str] = set()


class ProcessREPL(IsolatedEnv):
    """The sandbox runtime in a local child process with rlimits (see the module docstring).

    Extra keywords:
      python: the interpreter. None (default): this Python's base interpreter, or the first
        python3 the sandbox user may run; the sandbox then sees the standard library only, not
        the packages of your virtualenv (nor rlm's own dependencies), and needs no access to
        it. "venv": this process's own interpreter (`sys.executable`), so the code can import
        what your virtualenv has installed; the sandbox user must be able to read it. A path:
        that interpreter (Python >= 3.11).
      user: "auto" (default): a uid of its own per sandbox when the host is root (from a pool
        above 2,000,000,000; `nobody`, shared, if no pool is available), else the host's own
        user; a name or uid: that user (shared by every sandbox using it); None: never switch.
      confine: "auto" (default): when the host is root and the kernel offers cgroups, put the
        sandbox in a cgroup of its own (memory and process limits for the sandbox as a whole,
        everything killed at the end); otherwise run without one and say so in a warning and
        in `confinement`. "required": refuse to start without both (SandboxError). "off".
    """

    name: ClassVar[str] = "process"
    default_max_processes: ClassVar[int | None] = 128
    default_start_timeout: ClassVar[float] = 30.0
    pool_by_default: ClassVar[bool] = True

    def __init__(
        self,
        *,
        python: str | None = None,
        user: Any = "auto",
        confine: str = "auto",
        **kwargs: Any,
    ) -> None:
        if confine not in CONFINE_CHOICES:
            raise ConfigurationError(
                f"confine must be one of {', '.join(CONFINE_CHOICES)}, got {confine!r}"
            )
        self._python_option = python
        self._user_option = user
        self._confine = confine
        self._staging: HostStage | None = None
        self.pgid: int | None = None
        self.confinement: dict[str, Any] = {}
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    def pool_refusal(self) -> str | None:
        """A worker that shares its uid with other sandboxes could be reached, while it waits,
        by their code (its /proc entries: the channel token in its environ, its stdin), and so
        handed over to a later run already tampered with. Only a uid of its own, or the host's
        own uid (no boundary between sandboxes to keep in that case), may wait in a pool."""
        uid = self.confinement.get("uid")
        if uid is None or uid == os.geteuid() or self.confinement.get("uid_of_its_own"):
            return None
        return (
            f"the process sandbox runs as uid {uid}, shared with other sandboxes, so a waiting "
            "one could be reached by their code; no uid pool (see confine=) or pass pool=False"
        )

    def _lease_uid(self) -> UidLease | None:
        """A uid of its own, when `user="auto"` on a root host; None when the option names
        a user (or none), or the pool is unavailable and `confine` allows a shared one."""
        if self._user_option != "auto" or os.geteuid() != 0 or self._confine == "off":
            return None
        try:
            return UidLease.acquire()
        except (ConfinementUnavailable, OSError) as exc:
            if self._confine == "required":
                raise SandboxError(f"no uid of its own for the sandbox: {exc}") from None
            self.confinement["uid_pool"] = f"unavailable ({exc}); running as nobody, shared"
            return None

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

    def _make_cgroup(self) -> SandboxCgroup | None:
        if self._confine == "off":
            return None
        memory = None
        if self.memory_mb is not None:
            memory = (self.memory_mb + _MEMORY_HEADROOM_MB) * 2**20
        tasks = None if self.max_processes is None else self.max_processes + _TASK_HEADROOM
        try:
            return SandboxCgroup.create(memory, tasks)
        except ConfinementUnavailable as exc:
            if self._confine == "required":
                raise SandboxError(f"no cgroup for the sandbox: {exc}") from None
            self.confinement["cgroup"] = f"unavailable ({exc})"
            return None

    def _pick_python(self, uid: int | None) -> str:
        option = self._python_option
        if option == VENV:
            option = sys.executable
        if option is not None:
            if uid is not None and not _runnable_by_others(option):
                raise ConfigurationError(
                    f"the sandbox user (uid {uid}) cannot run {option!r} (it, or a directory "
                    "above it, is not open to other users); install that environment in a "
                    "world-readable place, pass another python=, or user=None (the sandbox "
                    "then runs as the host's own user)"
                )
            return option
        for candidate in _python_candidates():
            if uid is None or _runnable_by_others(candidate):
                return candidate
        raise ConfigurationError(
            "no Python interpreter the sandbox user may run was found; pass python='/path' "
            "(world-executable) or user=None"
        )

    def _launch(self) -> Transport:
        lease = self._lease_uid()
        cgroup: SandboxCgroup | None = None
        uid: int | None
        gid: int | None
        try:
            if lease is not None:
                uid, gid = lease.uid, lease.uid
            else:
                uid, gid = self._resolve_user()
            python = self._pick_python(uid)
            cgroup = self._make_cgroup()
            transport = self._start(python, uid, gid, cgroup, lease)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            if lease is not None:
                lease.release()
            raise
        self.confinement.update(
            uid=uid,
            uid_of_its_own=lease is not None,
            cgroup=cgroup.describe() if cgroup is not None else self.confinement.get("cgroup"),
        )
        missing = "; ".join(
            f"{key}: {self.confinement[key]}"
            for key in ("cgroup", "uid_pool")
            if "unavailable" in str(self.confinement.get(key))
        )
        if missing and missing not in _warned:  # once per reason, not per sandbox
            _warned.add(missing)
            logger.warning("the process sandbox runs with weaker isolation: %s", missing)
        self.reaper_scope = "cgroup" if cgroup is not None else None
        return transport

    def _start(
        self,
        python: str,
        uid: int | None,
        gid: int | None,
        cgroup: SandboxCgroup | None,
        lease: UidLease | None,
    ) -> ProcessTransport:
        root = self.make_host_dir("rlm-process-")
        work, stage = root / "work", root / "stage"
        work.mkdir()
        stage.mkdir()
        os.chmod(root, 0o711)
        self._staging = HostStage(stage)  # the worker reads a staged file by name, no more
        if uid is not None and gid is not None:
            os.chown(work, uid, gid)
        os.chmod(work, 0o700)
        env = scrubbed_env({**self.worker_env(), "PYTHONPATH": str(bundle_dir())}, home=str(work))
        argv = [python, "-s", "-m", WORKER_MODULE]
        try:
            transport = ProcessTransport(
                argv, env=env, cwd=str(work), user=uid, group=gid, cgroup=cgroup, lease=lease
            )
        except OSError as exc:
            raise SandboxError(f"could not start the worker process {argv[0]!r}: {exc}") from exc
        self.pgid = transport.pgid
        return transport

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        assert self._staging is not None
        return str(self._staging.write(name, data)), False

    def _unstage(self, path: str) -> None:
        assert self._staging is not None
        self._staging.remove(path)
