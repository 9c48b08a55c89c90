"""`IsolatedEnv`: the host side shared by every sandboxed environment.

A sandbox (a child process, a Docker container, a Modal or E2B sandbox) runs the stdlib-only
worker (`rlm.runtime.worker`); subclasses only start it and carry bytes (a `Transport`).
This class speaks the worker's channel protocol over that transport: it sends the hello (with
a per-sandbox channel token and the limits), contexts, histories and cells, and it relays the
worker's LM requests to the LM service over the environment's link (`RLM` gives a
`ServiceLink`: straight to the service in this process, no loopback hop), so sub-calls from
a sandbox take the same path as from the local REPL. Nothing from the sandbox is unpickled:
every reply is JSON and every field is type-checked before use.

Lifecycle: the sandbox starts in `__init__` and lives until `cleanup()` (or garbage
collection, or interpreter exit: a `weakref.finalize` backstop). A cell that outlives its
timeout plus `kill_grace` gets the sandbox killed and `SandboxError` raised; so does a worker
that dies. Both are terminal: the environment never restarts silently. When the interpreter
exits after a KeyboardInterrupt, every live sandbox is killed before threads are joined (a
thread waiting on a cell would otherwise hold the exit until the cell's timeout);
`kill_live_sandboxes` does the same on demand (the `rlm` command on SIGTERM).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from rlm.core.types import Message, REPLResult
from rlm.environments.base import BaseEnv, Handler, LMLink
from rlm.environments.link import open_link
from rlm.environments.sandbox_base import (
    Transport,
    check_json,
    encode_value,
    positive,
    register_live,
    release,
    text_of,
)
from rlm.errors import (
    ConfigurationError,
    ContextLoadError,
    ProtocolError,
    RemoteError,
    SandboxError,
)
from rlm.runtime.channel import (
    CHANNEL_VERSION,
    ENCODING_ENV,
    MAX_FRAME_BYTES,
    TOKEN_ENV,
    ChannelDecoder,
    Chunk,
    LineDecoder,
    MessageAssembler,
    send_message,
)

BASE_KWARGS = ("handler", "depth", "timeout", "max_output_chars", "tools")
LIMIT_KWARGS = (
    "memory_mb",
    "cpu_seconds",
    "max_open_files",
    "file_size_mb",
    "max_processes",
    "kill_grace",
    "start_timeout",
)
INLINE_LIMIT = 1 << 20  # contexts up to this size travel in a frame, larger ones as a file
DEFAULT_MAX_MESSAGE_CHARS = 512 * 2**20  # what one reply from a sandbox may hold
_LOAD_TIMEOUT = 300.0
_PROGRESS_WINDOW = 5.0  # a reply in transfer keeps the deadline off while parts keep coming
_EOF = object()
_CONTROL_TYPES = ("ready", "loaded", "result", "error", "fatal", "progress")


class IsolatedEnv(BaseEnv):
    """Base of the sandboxed environments: the worker channel, the relay, the lifecycle.

    Keywords (besides BaseEnv's `handler`, `depth`, `timeout`, `max_output_chars`, `tools`):
      memory_mb (1024): address-space limit of the worker (RLIMIT_AS), per process.
      cpu_seconds (3600): CPU time of the worker over its whole life (RLIMIT_CPU).
      max_open_files (256), file_size_mb (1024): RLIMIT_NOFILE and RLIMIT_FSIZE.
      max_processes: extra processes/threads the sandbox user may start (RLIMIT_NPROC).
      kill_grace (5): seconds after the cell timeout before the host kills the sandbox.
      start_timeout: seconds the sandbox may take to start and answer the hello.
    """

    name: ClassVar[str] = "isolated"
    isolated: ClassVar[bool] = True
    extra_kwargs: ClassVar[tuple[str, ...]] = ()
    default_max_processes: ClassVar[int | None] = None
    default_start_timeout: ClassVar[float] = 60.0
    base64_lines: ClassVar[bool] = False  # True: the transport carries text lines only
    # Whether an RLM keeps pre-started sandboxes of this kind warm unless told otherwise
    # (`rlm.environments.pool`): yes where a sandbox costs only local resources.
    pool_by_default: ClassVar[bool] = False
    # Whether the pool may end a used sandbox in the background, the run not waiting for it:
    # only where nothing it leaves in a shared place (the host's /tmp, say) can outlive the run.
    end_in_background: ClassVar[bool] = False
    # The kernel boundary the worker may use to find what its cells left running: "cgroup"
    # (a cgroup of the sandbox's own), "pidns" (a PID namespace of its own), or None.
    reaper_scope: str | None = None

    def __init__(self, *, prestart: bool = False, **kwargs: Any) -> None:
        """Start the sandbox. With `prestart=True` (the warm pool's) the worker is started and
        greeted (limits, depth, tool specs: the configuration, nothing of a run) but runs no
        cell and loads no context until `bind()` gives it to one run."""
        accepted = BASE_KWARGS + LIMIT_KWARGS + self.extra_kwargs
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigurationError(
                f"unknown keyword argument(s) for environment {self.name!r}: "
                f"{', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
        super().__init__(**{k: kwargs[k] for k in BASE_KWARGS if k in kwargs})
        positive("timeout", self.timeout)
        positive("max_output_chars", self.max_output_chars, allow_none=False, integer=True)
        self.memory_mb = positive("memory_mb", kwargs.get("memory_mb", 1024), integer=True)
        self.cpu_seconds = positive("cpu_seconds", kwargs.get("cpu_seconds", 3600), integer=True)
        self.max_open_files = positive(
            "max_open_files", kwargs.get("max_open_files", 256), integer=True
        )
        self.file_size_mb = positive("file_size_mb", kwargs.get("file_size_mb", 1024), integer=True)
        self.max_processes = positive(
            "max_processes", kwargs.get("max_processes", self.default_max_processes), integer=True
        )
        self.kill_grace = positive("kill_grace", kwargs.get("kill_grace", 5.0), allow_none=False)
        self.start_timeout = positive(
            "start_timeout",
            kwargs.get("start_timeout", self.default_start_timeout),
            allow_none=False,
        )
        self.capture_chars = max(1_000_000, 10 * self.max_output_chars)
        self.max_message_chars = DEFAULT_MAX_MESSAGE_CHARS
        self.channel_token = secrets.token_urlsafe(32)
        self.worker_info: dict[str, Any] = {}
        self._bound = not prestart  # whether a run owns it (and the worker had its hello)
        self._on_cleanup: Callable[[], None] | None = None  # the pool's count of sandboxes in use

        self._lock = threading.Lock()  # one request to the worker at a time
        self._state_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._replies: queue.Queue[Any] = queue.Queue()
        self._seq = itertools.count(1)
        self._dead: str | None = None
        self._progress = 0.0  # when the last sign of a reply in transfer arrived
        self._closed = False
        # The link the relay uses and the `handler` it was opened from, on the first request
        # and again whenever `handler` is replaced (a reference-style `update_handler_address`).
        self._service_link: tuple[Handler | None, LMLink | None] = (None, None)
        self._link_lock = threading.Lock()
        self._paths: list[Path] = []
        self._transport: Transport | None = None
        self._finalizer: weakref.finalize | None = None
        try:
            self._transport = self._launch()
            self._finalizer = weakref.finalize(self, release, self._transport, self._paths)
            register_live(self)
            threading.Thread(
                target=self._read_loop,
                args=(weakref.ref(self), self._transport, self._replies),
                name=f"rlm-{self.name}-reader",
                daemon=True,
            ).start()
            self._hello()
        except BaseException:
            self.cleanup()
            raise

    def bind(self, *, handler: Handler | None = None) -> None:
        """Give a pre-started sandbox to one run: the run's handler session, which stays on
        the host (the relay's link), is all that was missing. Once only: a sandbox never
        serves a second run."""
        with self._state_lock:
            if self._bound:
                raise SandboxError("this sandbox is already bound to a run")
            self._bound = True
        self.handler = handler
        try:
            self._check_usable()
        except BaseException:
            self.cleanup()
            raise

    def pool_refusal(self) -> str | None:
        """Why this sandbox must not wait in a pool for a later run (None: it may). A waiting
        sandbox must be out of reach of the code of other runs until it is bound."""
        return None

    # ---------------------------------------------------------------- for subclasses
    @abstractmethod
    def _launch(self) -> Transport:
        """Start the sandbox running `python3 -m rlm.runtime.worker` and return its transport."""

    @abstractmethod
    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        """Make `data` readable inside the sandbox; returns (path there, worker removes it)."""

    def _unstage(self, path: str) -> None:
        """Remove a staged file once the worker has read it (host-side files only)."""

    def worker_env(self) -> dict[str, str]:
        """Environment variables every worker gets (the token travels here, never in argv)."""
        env = {
            TOKEN_ENV: self.channel_token,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONSAFEPATH": "1",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        if self.base64_lines:
            env[ENCODING_ENV] = "base64"
        return env

    def make_host_dir(self, prefix: str) -> Path:
        """A host temp dir removed at cleanup (also by the finalizer)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._paths.append(path)
        return path

    # ------------------------------------------------------------------- channel
    def _send(self, message: dict[str, Any]) -> None:
        transport = self._transport
        if transport is None:
            raise SandboxError(self._dead or "the sandbox is not running")
        with self._write_lock:
            try:  # a message failing midway is ended by an abort frame: the stream stays in sync
                send_message(transport.write, message, base64_lines=self.base64_lines)
            except OSError as exc:
                raise SandboxError(
                    self._death_message(f"writing to the sandbox failed: {exc}")
                ) from exc

    @staticmethod
    def _read_loop(
        ref: weakref.ref[IsolatedEnv], transport: Transport, replies: queue.Queue[Any]
    ) -> None:
        """The reader thread. It holds the env only weakly, so an env nobody references is
        collected and its finalizer kills the sandbox."""
        env = ref()
        assert env is not None
        lines = LineDecoder() if env.base64_lines else None
        assembler = MessageAssembler(env.max_message_chars)
        del env
        frames = ChannelDecoder(MAX_FRAME_BYTES)
        error = ""
        try:
            while True:
                data = transport.read()
                if not data:
                    break
                if lines is not None:
                    data = lines.feed(data)
                for frame in frames.feed(data):
                    env = ref()
                    if env is None:
                        return
                    if isinstance(frame, Chunk):
                        env._progress = time.monotonic()
                    message = assembler.feed(frame)
                    if message is not None:
                        env._dispatch(message)
                    del env
        except ProtocolError as exc:
            error = f"the sandbox broke the channel protocol: {exc}"
            transport.kill()
        except Exception as exc:  # a transport failure: the sandbox is unreachable
            error = f"reading from the sandbox failed: {exc!r}"
            transport.kill()
        replies.put((_EOF, error))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if "id" in message and kind not in _CONTROL_TYPES:
            self._relay(message)  # any request: the service answers a bad one with its error
        elif kind in ("ready", "loaded", "result", "error", "fatal"):
            self._replies.put(message)
        elif kind == "progress":  # the cell has ended; a large reply is on its way
            self._progress = time.monotonic()
        else:
            raise ProtocolError(f"unexpected message type {kind!r} from the sandbox")

    # --------------------------------------------------------------------- relay
    def _link(self) -> LMLink | None:
        with self._link_lock:
            if self._closed:
                raise SandboxError("the environment was cleaned up")
            opened_from, link = self._service_link
            if link is None or opened_from is not self.handler:
                if link is not None and link is not opened_from:
                    link.close()  # a TCP link this relay opened itself
                link = open_link(self.handler)
                self._service_link = (self.handler, link)
            return link

    def _relay(self, message: dict[str, Any]) -> None:
        """A sandbox's request, handed to the LM service as it came: the service checks every
        field (the sandbox is not trusted) and answers; the answer goes back by id."""
        request_id = message.pop("id")
        try:
            link = self._link()
            if link is None:
                raise ConnectionError("no LM handler is connected to this REPL")
            future = link.submit(message)
        except Exception as exc:
            self._respond(request_id, error=exc)
            return
        future.add_done_callback(lambda f: self._respond_future(request_id, f))

    def _respond_future(self, request_id: Any, future: Future[dict[str, Any]]) -> None:
        try:
            result = future.result()
        except Exception as exc:
            self._respond(request_id, error=exc)
        else:
            self._respond(request_id, result=result)

    def _respond(
        self,
        request_id: Any,
        *,
        result: dict[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if error is None:
            response: dict[str, Any] = {"id": request_id, "result": result}
        elif isinstance(error, RemoteError):
            response = {
                "id": request_id,
                "error": {"type": error.error_type, "message": error.message},
            }
        else:
            response = {
                "id": request_id,
                "error": {"type": type(error).__name__, "message": str(error)},
            }
        try:
            self._send(response)
        except ProtocolError as exc:  # a result too large for the channel: tell the worker so
            self._send_quietly(
                {"id": request_id, "error": {"type": "ProtocolError", "message": str(exc)}}
            )
        except SandboxError:
            pass  # the sandbox is gone; nobody waits for the answer

    def _send_quietly(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(SandboxError, ProtocolError):
            self._send(message)

    # ------------------------------------------------------------------ requests
    def _death_message(self, what: str) -> str:
        transport = self._transport
        parts = [what]
        if transport is not None:
            exit_text = transport.describe_exit()
            if exit_text:
                parts.append(exit_text)
            diag = transport.diagnostics().strip()
            if diag:
                parts.append(f"worker stderr: {diag[-2000:]}")
        return "; ".join(parts)

    def _check_usable(self) -> None:
        if self._closed:
            raise SandboxError("the environment was cleaned up")
        if not self._bound:
            raise SandboxError("this pre-started sandbox is not bound to a run (bind() first)")
        if self._dead is not None:
            raise SandboxError(self._dead)

    def _die(self, reason: str) -> None:
        with self._state_lock:
            if self._dead is None:
                self._dead = reason
        if self._transport is not None:
            self._transport.kill()

    def _request(
        self, message: dict[str, Any], deadline: float | None, grace: float = 0.0
    ) -> dict[str, Any]:
        """Send one control message and wait for its reply (by seq) until `deadline`.

        A reply still arriving at the deadline (frames keep coming) may take up to `grace`
        seconds more, never longer: the sandbox writes the frames that signal progress, so
        they can only let a transfer finish, never move the hard limit (`deadline + grace`).
        """
        seq = next(self._seq)
        message["seq"] = seq
        self._send(message)
        # The hard limit: whatever the sandbox sends (progress frames, blob chunks), no wait
        # for this reply lasts past it.
        hard = None if deadline is None else deadline + grace
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                now = time.monotonic()
                if hard is not None and now < hard and now - self._progress < _PROGRESS_WINDOW:
                    # A large reply is still arriving: the cell itself ended in time.
                    deadline = min(now + _PROGRESS_WINDOW, hard)
                    continue
                raise TimeoutError
            try:
                item = self._replies.get(timeout=wait)
            except queue.Empty:
                continue  # the deadline (or a reply still in transfer) is checked above
            if isinstance(item, tuple) and item and item[0] is _EOF:
                self._replies.put(item)  # every later request sees the end too
                if self._closed:
                    raise SandboxError("the environment was cleaned up")
                what = item[1] or "the sandbox worker exited"
                reason = self._death_message(what)
                self._die(reason)
                raise SandboxError(reason)
            if item.get("seq") != seq:
                continue  # a stale reply
            if item.get("type") in ("error", "fatal"):
                error = item.get("error")
                text = (
                    f"{error.get('type')}: {error.get('message')}"
                    if isinstance(error, dict)
                    else text_of(error)
                )
                raise SandboxError(f"the sandbox worker refused the request: {text}")
            return item

    def _hello(self) -> None:
        tools = {
            name: {"description": spec.description, "callable": spec.callable, "value": spec.value}
            for name, spec in self.tools.items()
        }
        config = {
            "depth": self.depth,
            "capture_chars": self.capture_chars,
            "tools": tools,
            "memory_bytes": None if self.memory_mb is None else self.memory_mb * 2**20,
            "cpu_seconds": self.cpu_seconds,
            "max_open_files": self.max_open_files,
            "file_size_bytes": None if self.file_size_mb is None else self.file_size_mb * 2**20,
            "max_processes": self.max_processes,
            "scope": self.reaper_scope,
        }
        hello = {"type": "hello", "version": CHANNEL_VERSION, "token": self.channel_token}
        try:
            reply = self._request(
                {**hello, "config": config}, time.monotonic() + self.start_timeout
            )
        except TimeoutError:
            reason = self._death_message(
                f"the sandbox did not start within start_timeout={self.start_timeout:g}s"
            )
            self._die(reason)
            raise SandboxError(reason) from None
        if reply.get("type") != "ready":
            raise SandboxError(f"unexpected hello reply from the sandbox: {reply.get('type')!r}")
        self.worker_info = {k: v for k, v in reply.items() if k not in ("type", "seq")}

    # ---------------------------------------------------------------- BaseEnv API
    def load_context(self, context: Any, index: int = 0) -> None:
        """Bind `context_{index}` (and `context` for index 0) in the sandbox, loaded once."""
        self._load("context", context, index)

    def add_history(self, history: list[Message], index: int = 0) -> None:
        self._load("history", history, index)

    def _load(self, kind: str, value: Any, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfigurationError(f"index must be an int >= 0, got {index!r}")
        try:
            check_json(value, kind)
        except RecursionError:
            raise ContextLoadError(f"{kind} is nested too deeply") from None
        with self._lock:
            self._check_usable()
            data, fmt = encode_value(value)
            message: dict[str, Any] = {"type": "load", "kind": kind, "index": index}
            staged: str | None = None
            if len(data) <= INLINE_LIMIT:
                message["value"] = value
            else:
                staged, remove = self._stage(f"{kind}_{index}_{secrets.token_hex(4)}", data)
                message.update(path=staged, format=fmt, remove=remove)
            del data
            try:
                reply = self._request(
                    message, time.monotonic() + _LOAD_TIMEOUT, grace=_LOAD_TIMEOUT
                )
            except TimeoutError:
                reason = f"the sandbox did not load the {kind} within {_LOAD_TIMEOUT:g}s"
                self._die(reason)
                raise SandboxError(reason) from None
            except BaseException:
                self._die(f"interrupted while loading the {kind}")
                raise
            finally:
                if staged is not None:
                    self._unstage(staged)
            error = reply.get("error")
            if error is not None:
                text = (
                    f"{error.get('type')}: {error.get('message')}"
                    if isinstance(error, dict)
                    else text_of(error)
                )
                raise ContextLoadError(f"the sandbox could not load the {kind}: {text}")

    def execute(self, code: str) -> REPLResult:
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        with self._lock:
            self._check_usable()
            timeout = self.timeout_for_next_cell()
            deadline = None if timeout is None else time.monotonic() + timeout + self.kill_grace
            message = {
                "type": "exec",
                "code": code,
                "timeout": timeout,
                "capture_chars": self.capture_chars,
            }
            try:
                reply = self._request(message, deadline, grace=self.kill_grace)
            except TimeoutError:
                reason = (
                    f"the cell did not stop within its timeout ({timeout:g}s) plus "
                    f"kill_grace ({self.kill_grace:g}s); the sandbox was killed and its state "
                    "is lost"
                )
                self._die(reason)
                raise SandboxError(reason) from None
            except SandboxError:
                raise
            except BaseException:  # KeyboardInterrupt, cancellation: a cell is mid-flight
                self._die("interrupted while a cell was running; the sandbox was killed")
                raise
        return self._result(reply)

    def _result(self, reply: dict[str, Any]) -> REPLResult:
        cap = self.capture_chars
        final = reply.get("final") is True
        value = reply.get("final_value") if final else None
        text = reply.get("final_text")
        if final and not isinstance(text, str):
            text = value if isinstance(value, str) else text_of(value)
        raw_locals = reply.get("locals")
        local_types = (
            {str(k): text_of(v, 200) for k, v in raw_locals.items()}
            if isinstance(raw_locals, dict)
            else {}
        )
        duration = reply.get("duration")
        error = reply.get("error")
        return REPLResult(
            stdout=text_of(reply.get("stdout"), cap),
            stderr=text_of(reply.get("stderr"), cap + 10_000),
            locals=local_types,
            execution_time=float(duration) if isinstance(duration, (int, float)) else 0.0,
            final_answer=text if final else None,
            final_value=value,
            error=None if error is None else text_of(error, 10_000),
            timed_out=reply.get("timed_out") is True,
        )

    @property
    def alive(self) -> bool:
        return not self._closed and self._dead is None

    def cleanup(self) -> None:
        """Kill the sandbox, close the relay's link, remove temp files. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            on_cleanup, self._on_cleanup = self._on_cleanup, None
        if self._transport is not None:
            self._transport.kill()
        with self._link_lock:
            (_, link), self._service_link = self._service_link, (None, None)
        if link is not None:
            link.close()
        if self._finalizer is not None:
            self._finalizer()  # runs release once (kill is idempotent) and detaches
        else:
            for path in self._paths:
                shutil.rmtree(path, ignore_errors=True)
        if on_cleanup is not None:
            on_cleanup()
