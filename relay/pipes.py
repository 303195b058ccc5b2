"""Messages over pipes between relay's processes (the publisher and spool writer
processes talk to relay's main process over pipes an event loop watches): sent as one
message per event-loop iteration, and read as whole messages without blocking."""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_READ_SIZE = 1 << 16


def send(conn: Connection, message: Any) -> None:
    """``conn.send(message)``, pickled with the C pickler at once (``Connection.send``
    builds a ``ForkingPickler`` and a buffer for every message, which nothing sent here
    needs: the messages are tuples, lists, numbers, strings, bytes and functions)."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


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
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
            if len(chunk) < _READ_SIZE:
                break  # the pipe is empty (what comes next wakes the loop again)
        messages = []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack("!i", self.buffer[:4])
            if len(self.buffer) < 4 + size:
                break
            messages.append(pickle.loads(self.buffer[4:4 + size]))  # noqa: S301 (our child)
            del self.buffer[:4 + size]
        return messages


class Outbox:
    """Messages to another process, sent as one list per event-loop iteration.

    What is queued while one iteration runs goes in one pipe write: the publisher's
    reports and completion of a batch, the appends of the requests one iteration handled.
    The other side wakes once per iteration, not once per message. A failed send calls
    ``on_error`` with the reason.
    """

    def __init__(self, conn: Connection, on_error: Callable[[str], None], *,
                 peer: str = "parent") -> None:
        self.conn = conn
        self.on_error = on_error
        self.peer = peer
        self._queued: list[tuple[Any, ...]] = []

    def put(self, *message: Any) -> None:
        """Queue a message; the first one of an iteration schedules the send."""
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.flush)
        self._queued.append(message)

    def flush(self) -> None:
        """Send what is queued as one message."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        try:
            send(self.conn, queued)
        except (OSError, ValueError) as exc:
            self.on_error(f"{self.peer} unreachable: {exc}")

    def discard(self) -> None:
        """Drop what is queued (its pipe is being closed; a flush due sends nothing)."""
        self._queued.clear()
