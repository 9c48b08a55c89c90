"""The sandbox worker's processes: ending the ones its cells leave behind.

The worker leads its own process group (the process environment starts it in a new session,
Docker's init gives it a group, elsewhere `lead_own_group` makes one) and is a child subreaper
(`become_subreaper`, Linux): an orphaned descendant is re-parented to the worker instead of to
init. So what a cell starts stays findable two ways: as a member of the worker's group
(`subprocess`, `os.fork`, a shell's background job inherit it), and as a descendant of the
worker (which also covers a process that called `setsid()` or `setpgid()` to leave the group,
even after its parent exited). `leftovers` returns both; `GroupReaper.end_leftovers` kills them
after a cell, the worker calls it on its way out, and the process environment's host side
uses `end_tree` before it kills the worker itself.

Finding them means reading `/proc/<pid>/stat` of every process on the machine (about 10 µs
each), so it is skipped when the worker provably has no descendant: no direct child
(`/proc/self/task/*/children`, zombies included) and no child reaped since the last look
(`RUSAGE_CHILDREN` unchanged). Any descendant descends from a direct child of the worker, which
is then alive, a zombie, or reaped, so one of the two signs shows.

Both ways can be escaped by a cell: the subreaper flag is the worker's own, so a cell may
clear it (`prctl(PR_SET_CHILD_SUBREAPER, 0)`) and then a daemon that left the group goes to
init. So where the host gave the sandbox a kernel boundary, the reaper uses it instead, which
no process inside can leave: a cgroup of its own (`process` as root; the scope "cgroup": every
process whose /proc/<pid>/cgroup equals the worker's), or a PID namespace of its own
(`docker`; the scope "pidns": every process the worker can see, but PID 1 and itself).

Signals go through a pidfd where the kernel has them, after re-checking that the process is
still in the group, under the tree or in the scope, so a pid reused between the scan and the
signal is never hit.

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

_KILL_WAIT = 2.0  # how long to wait for killed members to die (they may be forking)
_PR_SET_CHILD_SUBREAPER = 36


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


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (Linux's PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux, or no prctl
        return False


def _scan() -> dict[int, tuple[int, int]]:
    """(ppid, pgrp) of every live (not zombie) process visible in /proc."""
    table: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None or len(fields) < 3 or fields[0] in (b"Z", b"X"):
            continue
        table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _cgroup_of(pid: int | str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            return f.read()
    except OSError:
        return None


def in_scope(pid: int, scope: str | None) -> bool:
    """Whether `pid` is inside the sandbox's kernel boundary (see the module doc)."""
    if scope == "pidns":
        return pid != 1 and pid != os.getpid()
    if scope == "cgroup":
        own = _cgroup_of("self")
        return own is not None and pid != os.getpid() and _cgroup_of(pid) == own
    return False


def leftovers(root: int, pgid: int, scope: str | None = None) -> tuple[list[int], set[int]]:
    """Live processes in group `pgid`, descending from `root` or inside `scope`, `root`
    excluded; and the tree's pids (`root` and its live descendants), for `_kill_member`'s
    re-check."""
    table = _scan()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    found = tree | {pid for pid, (_, pgrp) in table.items() if pgrp == pgid}
    if scope is not None:
        found |= {pid for pid in table if in_scope(pid, scope)}
    found.discard(root)
    return sorted(found), tree


def _kill_member(pid: int, pgid: int, tree: set[int], scope: str | None = None) -> None:
    """SIGKILL `pid` if it is still in `pgid`, its parent is in `tree` or it is in `scope`
    (through a pidfd: no reused pid is ever hit)."""
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
        if (
            fields is not None
            and len(fields) > 2
            and (int(fields[2]) == pgid or int(fields[1]) in tree or in_scope(pid, scope))
        ):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def end_tree(
    root: int, pgid: int, *, wait: float = _KILL_WAIT, scope: str | None = None
) -> set[int]:
    """SIGKILL every process in group `pgid`, under `root` or in `scope` but `root` itself,
    until none is left (or `wait` seconds pass); returns the pids killed.

    `root` stays alive meanwhile on purpose: while it lives, its descendants (even ones
    forking right now) stay under it, where the next round finds them.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + wait
    while True:
        found, tree = leftovers(root, pgid, scope)
        if not found:
            break
        for pid in found:
            _kill_member(pid, pgid, tree, scope)
        killed.update(found)
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)  # killed ones need a moment to die; new ones get caught next round
    return killed


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
    """Kills what the worker's cells leave running: its group and its tree (see module doc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.scope: str | None = None  # "cgroup" or "pidns" once the host says so
        self._usage = _children_usage()

    @property
    def applicable(self) -> bool:
        """Only the worker itself, and only while it leads its group (never a forked child,
        never a group it shares with its parent)."""
        return os.getpid() == self.pid and os.getpgrp() == self.pid

    def _quiet(self) -> bool:
        """True when the worker provably has no descendant (see the module doc)."""
        children = _direct_children()
        return children == [] and _children_usage() == self._usage

    def end_leftovers(self, *, reap: bool) -> int:
        """SIGKILL everything the cells left running (see `leftovers`); returns how many were
        killed. `reap` also collects the killed direct children, so they hold no process slot
        (RLIMIT_NPROC counts zombies); otherwise the cell's code may still wait for them.
        Exited children outside the group are always collected: they are daemons the worker
        adopted, or children the code moved to a group of their own, and left unreaped they
        would hold their slots for the worker's whole life."""
        if not self.applicable or self._quiet():
            return 0
        killed = end_tree(self.pid, self.pid, scope=self.scope)
        collect = set(killed) if reap else set()
        for pid in _direct_children() or ():
            fields = _stat_fields(pid)
            if fields is not None and len(fields) > 2 and int(fields[2]) != self.pid:
                collect.add(pid)
        for pid in collect:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        self._usage = _children_usage()
        return len(killed)
