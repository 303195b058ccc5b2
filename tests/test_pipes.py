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
