"""The channel codec (`rlm.runtime.channel`): one frame decoder for TCP and the sandbox channel,
messages that fail midway, and host code that never imports the sandbox program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlm.errors import FrameTooLargeError, ProtocolError
from rlm.runtime.channel import (
    BLOB_MIN_CHARS,
    HEADER,
    ChannelDecoder,
    Chunk,
    FrameDecoder,
    LineDecoder,
    MessageAssembler,
    encode_frame,
    message_frames,
    send_message,
)

ROOT = Path(__file__).resolve().parents[1]


def decode_all(data: bytes, *, base64_lines: bool = False) -> list[dict[str, Any]]:
    frames = ChannelDecoder()
    assembler = MessageAssembler()
    if base64_lines:
        data = LineDecoder().feed(data)
    out = []
    for item in frames.feed(data):
        message = assembler.feed(item)
        if message is not None:
            out.append(message)
    return out


def test_a_json_frame_decodes_the_same_on_tcp_and_on_the_sandbox_channel() -> None:
    frame = encode_frame({"type": "llm", "prompt": "héllo", "id": 3})
    tcp, channel = FrameDecoder(), ChannelDecoder()
    one_byte_at_a_time = [m for b in frame for m in tcp.feed(bytes([b]))]
    assert (
        one_byte_at_a_time
        == list(channel.feed(frame))
        == [{"type": "llm", "prompt": "héllo", "id": 3}]
    )


def test_a_flagged_header_is_a_chunk_on_the_channel_and_over_the_cap_on_tcp() -> None:
    blob = HEADER.pack(0x80000000 | 3) + b"abc"
    (chunk,) = ChannelDecoder().feed(blob)
    assert isinstance(chunk, Chunk) and (chunk.data, chunk.more) == (b"abc", False)
    tcp = FrameDecoder()
    with pytest.raises(FrameTooLargeError):
        tcp.feed(blob)
    with pytest.raises(ProtocolError, match="earlier error"):  # out of sync for good
        tcp.feed(encode_frame({"ok": True}))


def test_long_strings_travel_as_blobs_and_come_back_in_place() -> None:
    text = "é" * (BLOB_MIN_CHARS + 5)
    message = {"type": "result", "final_value": {"a": [text, 1]}, "stdout": text}
    frames = message_frames(message)
    assert len(frames) == 3  # two blobs, then the message
    assert decode_all(b"".join(frames)) == [message]


def test_a_message_that_fails_midway_is_aborted_and_the_stream_stays_in_sync() -> None:
    written: list[bytes] = []
    bad = {"type": "result", "stdout": "x" * BLOB_MIN_CHARS, "final_value": object()}
    with pytest.raises(ProtocolError, match="not encodable"):
        send_message(written.append, bad)
    assert len(written) == 2  # the blob went out before the failure, then the abort
    send_message(written.append, {"type": "result", "stdout": "fine"})
    assert decode_all(b"".join(written)) == [{"type": "result", "stdout": "fine"}]


def test_base64_lines_carry_the_same_messages() -> None:
    written: list[bytes] = []
    message = {"type": "ready", "text": "y" * (BLOB_MIN_CHARS + 1)}
    send_message(written.append, message, base64_lines=True)
    data = b"".join(written)
    assert data.count(b"\n") == len(written) and b"\x00" not in data
    assert decode_all(data, base64_lines=True) == [message]


def test_host_code_does_not_import_the_sandbox_program() -> None:
    probe = (  # every host module: all of rlm but the runtime shipped into sandboxes
        "import importlib, pkgutil, sys, rlm\n"
        "for info in pkgutil.walk_packages(rlm.__path__, 'rlm.'):\n"
        "    if not info.name.startswith('rlm.runtime'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('rlm.runtime.worker')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
