"""`HostLink`: the sandbox worker's one object on its channel to the host.

Everything the worker says or hears goes through it: `send` writes a whole message (its frames
from `rlm.runtime.channel`, one message at a time), `submit` is the `Repl`'s channel (an LM
request with a fresh id; the future settles when the host's response arrives), and `start`
runs the reader thread, which settles responses and hands every other message (hello, load,
exec, shutdown) to the worker. It knows nothing of cells, limits or the Repl.

Why one object: today the link lives in the process that runs the cells, so a cell can find
its descriptor and write frames itself (SECURITY.md, known gap 6). The sandbox-hardening work
moves the channel into a supervisor process, and this module is where that move happens:

1. `python3 -m rlm.runtime.worker` starts as the supervisor: it claims stdin/stdout as now,
   makes a socketpair and forks; the child becomes today's worker, with
   `HostLink(sock, sock)` in place of the channel descriptors (same frames, so nothing else
   in the worker changes), and never sees the channel itself.
2. The supervisor relays between the socketpair and the channel with the codec it already
   has (`ChannelDecoder` + `MessageAssembler` in, `send_message` out), so what the worker
   process writes reaches the host only as whole, well-formed messages, and it owns what must
   outlive a hostile cell: checking the hello's token, a cell's hard deadline (kill the worker
   at its deadline plus a grace) and the group kill when the host goes away
   (`Worker.channel_closed`/`stop_group` move there).
3. What it does not fix: the worker process still reports its cells' results over the
   socketpair, so a cell can still forge its own `result` (SECURITY.md says so); what it
   gains is that the bytes on the host's channel, the deadlines and the host-gone kill no
   longer depend on the process that runs user code.

Standard library only (plus `rlm.errors` and sibling runtime modules).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from rlm.errors import ProtocolError

from .channel import ChannelDecoder, LineDecoder, MessageAssembler, send_message, write_all
from .protocol import PendingRequests

_READ_CHUNK = 1 << 20


class HostLink:
    """The worker's end of the channel: its two descriptors, writes, requests, the reader."""

    def __init__(self, in_fd: int, out_fd: int, *, base64_lines: bool = False) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.base64_lines = base64_lines
        self._write_lock = threading.Lock()
        self._pending = PendingRequests()

    def _write(self, data: bytes) -> None:
        write_all(self.out_fd, data)

    def send(self, message: dict[str, Any]) -> None:
        """Write one whole message (a message that fails midway is aborted, then raised)."""
        with self._write_lock:
            send_message(self._write, message, base64_lines=self.base64_lines)

    # -- requests to the host (the Repl's channel) -----------------------------------------
    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        request_id, future = self._pending.open()
        if future.done():
            return future
        try:
            self.send({**payload, "id": request_id})
        except ProtocolError as exc:  # this request only (not encodable)
            self._pending.discard(request_id, exc)
        except OSError as exc:
            self.fail(ProtocolError(f"the channel to the host is gone: {exc}"))
        return future

    def fail(self, error: ProtocolError) -> None:
        """Fail every pending and later request."""
        self._pending.fail(error)

    # -- reading ---------------------------------------------------------------------------
    def start(
        self,
        on_message: Callable[[dict[str, Any]], None],
        on_closed: Callable[[], None],
    ) -> None:
        """Start the reader thread: responses settle their requests, every other message goes
        to `on_message`; when the channel ends (EOF or a broken stream) pending requests fail
        and `on_closed` runs, in the reader thread."""

        def run() -> None:
            error = self._read(on_message)
            self.fail(error or ProtocolError("the host closed the channel"))
            on_closed()

        threading.Thread(target=run, name="rlm-channel-reader", daemon=True).start()

    def _read(self, on_message: Callable[[dict[str, Any]], None]) -> ProtocolError | None:
        """Read messages until EOF; returns the error that stopped it, if any."""
        frames = ChannelDecoder()
        lines = LineDecoder() if self.base64_lines else None
        assembler = MessageAssembler()
        try:
            while True:
                data = os.read(self.in_fd, _READ_CHUNK)
                if not data:
                    return ProtocolError("channel closed mid-frame") if frames.pending else None
                if lines is not None:
                    data = lines.feed(data)
                for frame in frames.feed(data):
                    message = assembler.feed(frame)
                    if message is None:
                        continue
                    if "type" not in message and "id" in message:
                        self._pending.settle(message)
                    else:
                        on_message(message)
        except ProtocolError as exc:
            return exc
        except OSError as exc:
            return ProtocolError(f"reading the channel failed: {exc}")

    def after_fork_in_child(self) -> None:
        """In a forked child: the descriptors are closed (the caller's at-fork hook), no lock
        another thread of the parent held at the fork is kept, every request fails."""
        self._write_lock = threading.Lock()
        self._pending = PendingRequests()
        self.fail(ProtocolError("a forked child process has no channel to the host"))
