"""Unit tests for relay.pipes: whole messages from a non-blocking pipe."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import struct

from relay.pipes import Frames


def test_frames_wait_for_whole_messages() -> None:
    """A message written in pieces (as pipes split large writes) is read only once whole."""
    read, write = multiprocessing.Pipe(duplex=False)
    os.set_blocking(read.fileno(), False)
    frames = Frames(read.fileno())
    payload = pickle.dumps(("complete", 1, ["x" * 30_000], None))
    frame = struct.pack("!i", len(payload)) + payload
    assert frames.read() == []
    os.write(write.fileno(), frame[:5000])
    assert frames.read() == []
    os.write(write.fileno(), frame[5000:] + frame)
    assert frames.read() == [("complete", 1, ["x" * 30_000], None)] * 2
    write.send(("kafka", True, None))
    assert frames.read() == [("kafka", True, None)]
    write.close()
    assert frames.read() == [] and frames.closed


def test_frames_treat_a_failing_pipe_as_closed() -> None:
    """A read error (the fd is gone) ends the stream like end of file, without raising."""
    read, write = multiprocessing.Pipe(duplex=False)
    frames = Frames(read.fileno())
    write.send(("kafka", True, None))
    assert frames.read() == [("kafka", True, None)]
    fd = os.dup(read.fileno())
    read.close()
    frames.fd = fd
    os.close(fd)  # reads now fail with EBADF
    assert frames.read() == [] and frames.closed
    write.close()
