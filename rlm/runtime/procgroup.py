"""The sandbox worker's process group: ending the processes its cells leave behind.

The worker leads its own process group (the process environment starts it in a new session,
Docker's init gives it a group, elsewhere `lead_own_group` makes one). Every process a cell
starts (`subprocess`, `os.fork`, a shell's background job) inherits that group, so the group's
other members are exactly what cells left running. `GroupReaper.end_leftovers` kills them
after a cell, and the worker calls it on its way out.

Finding the members means reading `/proc/<pid>/stat` of every process on the machine (about
10 µs each), so it is skipped when the worker provably has no descendant: no direct child
(`/proc/self/task/*/children`, zombies included) and no child reaped since the last look
(`RUSAGE_CHILDREN` unchanged). Any descendant descends from a direct child of the worker, which
is then alive, a zombie, or reaped, so one of the two signs shows. A process that called
`setsid()` has left the group and is out of reach (a documented limit).

Signals go through a pidfd where the kernel has them, after re-checking the group, so a pid
reused between the scan and the signal is never hit.

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

_KILL_WAIT = 2.0  # how long to wait for killed members to die (they may be forking)


def lead_own_group() -> None:
    """Make this process the leader of a process group, if it is not one already."""
    if os.getpgrp() != os.getpid():
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[-1].split()


def group_members(pgid: int, exclude: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, other than `exclude`."""
    members = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == exclude:
            continue
        fields = _stat_fields(int(name))
        if fields is None or len(fields) < 3:
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def _kill_member(pid: int, pgid: int) -> None:
    """SIGKILL `pid` if it is still in `pgid` (through a pidfd: no reused pid is ever hit)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd support here: a plain kill
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        return
    try:
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 2 and int(fields[2]) == pgid:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def _direct_children() -> list[int] | None:
    """Children of every thread of this process (zombies included); None if not knowable."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    pids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                pids.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            if tid == str(os.getpid()):
                return None  # even the main thread has no such file: the kernel lacks it
            continue  # the thread ended meanwhile
        except OSError:
            return None
    return pids


def _children_usage() -> tuple[float, ...]:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_majflt, usage.ru_nvcsw)


class GroupReaper:
    """Kills what the worker's cells leave running in its process group (see module doc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._usage = _children_usage()

    @property
    def applicable(self) -> bool:
        """Only the worker itself, and only while it leads its group (never a forked child,
        never a group it shares with its parent)."""
        return os.getpid() == self.pid and os.getpgrp() == self.pid

    def _quiet(self) -> bool:
        """True when no process other than the worker can be in the group."""
        children = _direct_children()
        return children == [] and _children_usage() == self._usage

    def end_leftovers(self, *, reap: bool) -> int:
        """SIGKILL every other member of the group; returns how many were killed. `reap`
        also collects the killed direct children, so they hold no process slot
        (RLIMIT_NPROC counts zombies); otherwise the cell's code may still wait for them."""
        if not self.applicable or self._quiet():
            return 0
        killed: set[int] = set()
        deadline = time.monotonic() + _KILL_WAIT
        while True:
            members = group_members(self.pid, exclude=self.pid)
            if not members:
                break
            for pid in members:
                _kill_member(pid, self.pid)
            killed.update(members)
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)  # killed members need a moment to die; new ones get caught next
        if reap:
            for pid in killed:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
        self._usage = _children_usage()
        return len(killed)
