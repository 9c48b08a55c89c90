"""The host side of `kernel_mode="subprocess"`: an ipykernel process and its cells.

The kernel runs under this interpreter (so it imports this very `rlm`), its working directory a
private temporary one. After start, `rlm.environments._ipython_cells.install_in_kernel` wires
the helpers inside it; each user cell then ends with a summary (error, answer, variables) the
kernel publishes as display data of a private MIME type, attributed by the request's msg_id, so
nothing a late or timed-out cell sends can be taken for a later cell's result.

Timeouts are hard: the kernel's own timer stops a cell at its deadline; if the cell ignores that
(it catches BaseException, say), the host interrupts the kernel (SIGINT) after a grace period,
and if that does not end the cell either, restarts the kernel: the namespace is lost, the
contexts and histories are loaded again, and the cell's result says so.
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import rlm
from rlm.environments._ipython_cells import CELL_MIME
from rlm.environments.sandbox_base import scrubbed_env
from rlm.errors import SandboxError

_SLICE = 0.1
INTERRUPT_GRACE = 2.0  # after the cell's own deadline, before the host sends SIGINT
RESTART_GRACE = 5.0  # after SIGINT, before the host restarts the kernel


@dataclass
class KernelCell:
    """What the host collected for one cell."""

    stdout: str = ""
    stderr: str = ""
    summary: dict[str, Any] | None = None
    dropped: int = 0
    interrupted: bool = False
    restarted: bool = False
    died: bool = False
    notes: list[str] = field(default_factory=list)


class _Bounded:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        room = self.cap - self.size
        if room < len(text):
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if text:
            self.parts.append(text)
            self.size += len(text)

    def value(self) -> str:
        return "".join(self.parts)


class Kernel:
    """One ipykernel subprocess and the client talking to it."""

    def __init__(self, *, cwd: str, startup_timeout: float, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._startup_timeout = startup_timeout
        self._cwd = cwd
        self.km: Any = None
        self.kc: Any = None
        self._start()

    def _start(self) -> None:
        from jupyter_client.manager import KernelManager

        # A fresh manager each time (a shut-down one is spent); Unix sockets in the private
        # directory rather than TCP ports any local user could connect to.
        self.km = KernelManager(
            kernel_name="python3", transport="ipc", ip=os.path.join(self._cwd, ".kernel")
        )
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(rlm.__file__)))
        pythonpath = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
        )
        # An allowlisted environment, as for the "process" sandbox: no provider keys or
        # tokens of the host reach the kernel (jupyter_client adds JPY_PARENT_PID, with which
        # the kernel exits when this process does).
        env = scrubbed_env({"PYTHONPATH": pythonpath}, home=self._cwd)
        self.km.start_kernel(cwd=self._cwd, env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=self._startup_timeout)
        except RuntimeError as exc:
            raise SandboxError(f"the IPython kernel did not start: {exc}") from exc
        self.run_silent(self._bootstrap, self._startup_timeout)

    def run_silent(self, code: str, timeout: float | None = 60.0) -> None:
        """Run host code in the kernel (no history, no hooks); raise if it fails."""
        try:
            reply = self.kc.execute(
                code,
                silent=True,
                store_history=False,
                allow_stdin=False,
                reply=True,
                timeout=timeout,
            )
        except TimeoutError as exc:
            raise SandboxError(f"the IPython kernel did not answer within {timeout}s") from exc
        content = reply.get("content", {})
        if content.get("status") != "ok":
            raise SandboxError(
                f"the IPython kernel failed: {content.get('ename')}: {content.get('evalue')}"
            )

    def run_cell(self, code: str, timeout: float | None, cap: int) -> KernelCell:
        """Run one user cell; returns once the kernel is idle again (or was restarted)."""
        out, err = _Bounded(cap), _Bounded(cap)
        cell = KernelCell()
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        started = time.monotonic()
        interrupt_at = None if timeout is None else started + timeout + INTERRUPT_GRACE
        restart_at: float | None = None
        while True:
            now = time.monotonic()
            if interrupt_at is not None and now >= interrupt_at and not cell.interrupted:
                cell.interrupted = True
                self.km.interrupt_kernel()
                restart_at = now + RESTART_GRACE
            if restart_at is not None and now >= restart_at:
                cell.restarted = True
                self.restart()
                break
            try:
                msg = self.kc.get_iopub_msg(timeout=_SLICE)
            except queue.Empty:
                if not self.km.is_alive():
                    cell.died = True
                    self.restart()
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            content = msg.get("content", {})
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "stream":
                (err if content.get("name") == "stderr" else out).write(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                if CELL_MIME in data:
                    summary = data[CELL_MIME]
                    cell.summary = json.loads(summary) if isinstance(summary, str) else summary
                elif "text/plain" in data:
                    out.write(str(data["text/plain"]) + "\n")
            elif kind == "error" and cell.summary is None:
                cell.notes.append(f"{content.get('ename')}: {content.get('evalue')}\n")
        cell.stdout, cell.stderr, cell.dropped = out.value(), err.value(), out.dropped + err.dropped
        return cell

    def restart(self) -> None:
        """A fresh kernel (the old one is killed) with the helpers installed again."""
        if self.kc is not None:
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        self._start()

    def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        self.km.shutdown_kernel(now=True)
