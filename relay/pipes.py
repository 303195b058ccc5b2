"""Whole messages from a pipe, read without blocking (the publisher and spool writer
processes talk to relay's main process over pipes an event loop watches)."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any


class Frames:
    """Messages read from a pipe that a :class:`Connection` writes into, without blocking.

    The fd is made non-blocking (an event loop watches it; uvloop would do so anyway), so
    ``Connection.recv`` could meet half a message (writes over 4 KiB are not atomic) and
    fail. This reads what is there and yields only whole frames: a 4-byte big-endian
    length, then a pickle (``Connection.send``'s format).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buffer = bytearray()
        self.closed = False

    def read(self) -> list[Any]:
        """The whole messages available now (``closed`` is set at end of file, or when the
        pipe fails: its writer is gone either way)."""
        while not self.closed:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
        messages = []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack("!i", self.buffer[:4])
            if len(self.buffer) < 4 + size:
                break
            messages.append(pickle.loads(self.buffer[4:4 + size]))  # noqa: S301 (our child)
            del self.buffer[:4 + size]
        return messages
