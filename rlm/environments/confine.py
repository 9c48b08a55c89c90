"""Kernel boundaries for the `process` environment: a cgroup per sandbox, a uid per sandbox.

A process group and a child subreaper are conventions a cell can leave (`setsid()`, clearing
the subreaper flag). A cgroup is not: only root can move a process out of it, so everything a
cell starts stays inside, is counted against the sandbox's memory and process limits, and
dies when the host writes `cgroup.kill` (Linux >= 5.14; before that, every member is killed
until none is left). Likewise a user of its own per live sandbox keeps concurrent sandboxes
from reading (`/proc/<pid>/mem`) or signalling each other.

Both need the host to run as root (or a delegated cgroup subtree). `SandboxCgroup.create`
and `UidLease.acquire` raise `ConfinementUnavailable` saying why when the machine cannot
provide them; the environment then refuses or degrades as its options say.

Two cgroup layouts are handled:
- cgroup v2 with the memory and pids controllers (most current distributions): one directory
  `<v2>/rlm.sandboxes/rlm-<host pid>-<pid namespace>-<id>` holding membership, `memory.max`,
  `memory.swap.max`, `pids.max` and `cgroup.kill`;
- the hybrid layout (v2 mounted for membership and `cgroup.kill` only, the controllers on v1
  hierarchies): the v2 directory under the host's own v2 cgroup, plus one directory under the
  host's own cgroup in each of the v1 `memory` and `pids` hierarchies.
Directories of sandboxes whose host died (SIGKILL leaves no time to clean up) are killed and
removed by the next host that creates one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import stat
import time
from pathlib import Path

_PREFIX = "rlm-"
_V2_PARENT = "rlm.sandboxes"
UID_BASE = 2_000_000_000  # far above any distribution's user and container ranges
UID_COUNT = 10_000
_LOCK_DIRS = ("/run/rlm-sandbox-uids", "/var/run/rlm-sandbox-uids")
_EMPTY_WAIT = 5.0


class ConfinementUnavailable(Exception):
    """This machine cannot give the sandbox the boundary asked for; the message says why."""


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _mounts() -> tuple[str | None, dict[str, str]]:
    """The cgroup2 mount point, and the v1 mount point of the memory and pids controllers."""
    v2: str | None = None
    v1: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue  # only whole hierarchies (not a cgroup namespace's bind of a subtree)
        mount, fstype, options = fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mount
        elif fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options:
                    v1.setdefault(controller, mount)
    return v2, v1


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy: "" for v2, else the controller name."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_all(directory: Path, wait: float = _EMPTY_WAIT) -> None:
    """Kill every process of the cgroup at `directory` and wait until it is empty."""
    kill_file = directory / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
    deadline = time.monotonic() + wait
    while True:
        members = _procs(directory)
        if not members or time.monotonic() > deadline:
            return
        for pid in members:  # no cgroup.kill (v1, old kernels), or still dying
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _remove(directory: Path) -> None:
    for _ in range(200):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            _kill_all(directory, wait=0.05)


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _host_alive(name: str) -> bool:
    """Whether the host that created the cgroup `name` (rlm-<pid>-<pid ns>-<id>) may still
    run. A host in another PID namespace cannot be checked, so it counts as alive."""
    try:
        _, pid_text, namespace, _ = name.split("-", 3)
        pid = int(pid_text)
    except ValueError:
        return True
    if namespace != _pid_namespace():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(parent: Path) -> None:
    """Kill and remove the sandbox cgroups of hosts that died without cleaning up."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if entry.is_dir() and entry.name.startswith(_PREFIX) and not _host_alive(entry.name):
                _kill_all(entry, wait=1.0)
                _remove(entry)


class SandboxCgroup:
    """One sandbox's cgroup(s): membership, a memory and a process limit, a kill switch."""

    def __init__(self, dirs: list[Path], layout: str) -> None:
        self.dirs = dirs  # the v2 directory first
        self.layout = layout  # "v2" or "hybrid"
        self._removed = False

    @classmethod
    def create(cls, memory_bytes: int | None, max_tasks: int | None) -> SandboxCgroup:
        """A new cgroup (set) with the limits; `ConfinementUnavailable` if there is none."""
        if os.geteuid() != 0:
            raise ConfinementUnavailable("creating a cgroup needs the host to run as root")
        v2, v1 = _mounts()
        if v2 is None:
            raise ConfinementUnavailable("no cgroup2 hierarchy is mounted")
        root = Path(v2)
        name = f"{_PREFIX}{os.getpid()}-{_pid_namespace()}-{secrets.token_hex(6)}"
        try:
            available = (root / "cgroup.controllers").read_text().split()
        except OSError as exc:
            raise ConfinementUnavailable(f"cgroup2 at {v2} is unreadable: {exc}") from None
        dirs: list[Path] = []
        try:
            if {"memory", "pids"} <= set(available):
                parent = root / _V2_PARENT
                _write(root / "cgroup.subtree_control", "+memory +pids")
                parent.mkdir(exist_ok=True)
                _write(parent / "cgroup.subtree_control", "+memory +pids")
                _sweep(parent)
                own = parent / name
                own.mkdir()
                dirs.append(own)
                if memory_bytes is not None:
                    _write(own / "memory.max", str(memory_bytes))
                    if (own / "memory.swap.max").exists():
                        _write(own / "memory.swap.max", "0")
                if max_tasks is not None:
                    _write(own / "pids.max", str(max_tasks))
                return cls(dirs, "v2")
            if not {"memory", "pids"} <= set(v1):
                raise ConfinementUnavailable(
                    "neither cgroup v2 nor v1 offers the memory and pids controllers"
                )
            paths = _own_paths()
            parent = root / paths.get("", "/").lstrip("/")
            _sweep(parent)
            own = parent / name
            own.mkdir()
            dirs.append(own)
            for controller in ("memory", "pids"):
                v1_parent = Path(v1[controller]) / paths.get(controller, "/").lstrip("/")
                _sweep(v1_parent)
                v1_own = v1_parent / name
                v1_own.mkdir()
                dirs.append(v1_own)
                if controller == "memory" and memory_bytes is not None:
                    _write(v1_own / "memory.limit_in_bytes", str(memory_bytes))
                    if (v1_own / "memory.memsw.limit_in_bytes").exists():
                        _write(v1_own / "memory.memsw.limit_in_bytes", str(memory_bytes))
                if controller == "pids" and max_tasks is not None:
                    _write(v1_own / "pids.max", str(max_tasks))
            return cls(dirs, "hybrid")
        except ConfinementUnavailable:
            cls(dirs, "").remove()
            raise
        except OSError as exc:
            cls(dirs, "").remove()
            raise ConfinementUnavailable(f"could not set up a cgroup: {exc}") from None

    def add(self, pid: int) -> None:
        """Move `pid` into every directory (before it runs any code of the sandbox)."""
        for directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))

    def members(self) -> list[int]:
        return _procs(self.dirs[0]) if self.dirs else []

    def kill(self) -> None:
        """SIGKILL every process in the sandbox, however it got there; waits until none is
        left. Idempotent."""
        if self.dirs:
            _kill_all(self.dirs[0])

    def remove(self) -> None:
        """Kill what is left and remove the directories. Idempotent."""
        if self._removed:
            return
        self._removed = True
        self.kill()
        for directory in reversed(self.dirs):
            _remove(directory)

    def describe(self) -> str:
        return ", ".join(str(d) for d in self.dirs)


def _lock_dir() -> Path:
    for candidate in _LOCK_DIRS:
        path = Path(candidate)
        with contextlib.suppress(OSError):
            path.mkdir(mode=0o700, exist_ok=True)
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o077:
                return path
    raise ConfinementUnavailable(f"no private lock directory ({', '.join(_LOCK_DIRS)})")


def _uid_in_use(uid: int) -> bool:
    """Whether any process runs as `uid` (real, effective, saved or filesystem)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if str(uid) in line.split()[1:]:
                    return True
                break
    return False


class UidLease:
    """A uid (and gid of the same number) no other live sandbox and no account uses, held
    through a lock file until `release()` (or the host's death, which drops the lock)."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    @classmethod
    def acquire(cls) -> UidLease:
        if os.geteuid() != 0:
            raise ConfinementUnavailable("a uid per sandbox needs the host to run as root")
        directory = _lock_dir()
        start = secrets.randbelow(UID_COUNT)
        for step in range(UID_COUNT):
            uid = UID_BASE + (start + step) % UID_COUNT
            fd = os.open(directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if _has_account(uid) or _uid_in_use(uid):
                os.close(fd)
                continue
            return cls(uid, fd)
        raise ConfinementUnavailable("every sandbox uid is in use")

    def release(self) -> None:
        """Remove what the uid left in shared places, then free it. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        remove_ipc_of(self.uid)
        for place in ("/dev/shm", "/tmp", "/var/tmp"):
            remove_files_of(self.uid, place)
        os.close(fd)


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def remove_files_of(uid: int, place: str) -> int:
    """Remove the entries directly under `place` owned by `uid` (a sandbox's files in shared
    writable places: POSIX shared memory in /dev/shm, temp files); returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(place))
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != uid:
            continue
        removed += 1
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    return removed


def remove_ipc_of(uid: int) -> int:
    """Remove the System V shared memory segments, message queues and semaphore sets owned
    or created by `uid` (they outlive every process); returns how many."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    ipc_rmid = 0
    removers = {
        "shm": ("shmid", lambda ident: libc.shmctl(ident, ipc_rmid, None)),
        "msg": ("msqid", lambda ident: libc.msgctl(ident, ipc_rmid, None)),
        "sem": ("semid", lambda ident: libc.semctl(ident, 0, ipc_rmid)),
    }
    removed = 0
    for kind, (id_column, remove) in removers.items():
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            header = lines[0].split()
            columns = header.index(id_column), header.index("uid"), header.index("cuid")
        except (OSError, IndexError, ValueError):
            continue
        for line in lines[1:]:
            fields = line.split()
            with contextlib.suppress(IndexError, ValueError):
                ident, owner, creator = (int(fields[i]) for i in columns)
                if uid in (owner, creator) and remove(ident) == 0:
                    removed += 1
    return removed
