"""Resource limits of a sandbox worker, set from its hello before any user code runs.

rlimits bind per process (and are inherited by what a cell starts): memory (address space),
CPU seconds, open files, file size, processes, no core dumps. `apply_limits` only ever lowers
them and reports what it applied, so the host can say which limits hold; RLIMIT_NPROC does not
bind for root, which is reported as such. The sandbox as a whole is bounded by the host (a
cgroup, a container), not here.

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def _count_tasks(uid: int) -> int:
    """Threads of all processes whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:  # "Uid:\treal effective saved fs"
                total += int(fields.get("Threads", "1").strip())
        except (KeyError, ValueError, IndexError):
            continue
    return total


def apply_limits(config: dict[str, Any]) -> dict[str, Any]:
    """Lower this process's rlimits as configured; returns what was applied (for the host)."""
    import resource

    applied: dict[str, Any] = {}

    def lower(which: int, soft: int, hard: int | None = None) -> int:
        _, cur_hard = resource.getrlimit(which)
        hard = soft if hard is None else hard
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
        return soft

    def wanted(key: str) -> int | None:
        value = config.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None

    applied["core"] = lower(resource.RLIMIT_CORE, 0)
    if (memory := wanted("memory_bytes")) is not None:
        applied["memory_bytes"] = lower(resource.RLIMIT_AS, memory)
    if (cpu := wanted("cpu_seconds")) is not None:
        applied["cpu_seconds"] = lower(resource.RLIMIT_CPU, cpu, cpu + 5)
    if (files := wanted("max_open_files")) is not None:
        applied["max_open_files"] = lower(resource.RLIMIT_NOFILE, files)
    if (fsize := wanted("file_size_bytes")) is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG
        applied["file_size_bytes"] = lower(resource.RLIMIT_FSIZE, fsize)
    if (procs := wanted("max_processes")) is not None:
        if os.getuid() == 0:
            applied["max_processes"] = "not enforced: RLIMIT_NPROC does not bind for root"
        else:
            total = _count_tasks(os.getuid()) + procs
            applied["max_processes"] = lower(resource.RLIMIT_NPROC, total)
    return applied
