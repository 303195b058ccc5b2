"""Unit tests for relay.pipes: messages sent once per loop iteration, read whole."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import struct
import threading

from relay.pipes import Frames, Outbox, send


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


def test_frames_read_a_message_larger_than_one_read() -> None:
    """A message of several read sizes waiting whole in the pipe comes out of one call."""
    read, write = multiprocessing.Pipe(duplex=False)
    os.set_blocking(read.fileno(), False)
    frames = Frames(read.fileno())
    big = ("done", [b"y" * 200_000], 7, None)

    def writer() -> None:
        send(write, big)

    thread = threading.Thread(target=writer)
    thread.start()  # the pipe holds 64 KiB by default: the writer blocks until it is read
    got: list[object] = []
    while not got:
        got = frames.read()
    thread.join()
    assert got == [big]


def test_send_writes_what_connection_recv_reads() -> None:
    """send() uses Connection.send's wire format (a length, then a pickle)."""
    read, write = multiprocessing.Pipe(duplex=False)
    send(write, ("ready", 12, [1.5, None, b"raw"]))
    assert read.recv() == ("ready", 12, [1.5, None, b"raw"])


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


async def test_outbox_discard_drops_what_is_queued() -> None:
    """Messages discarded before the iteration's flush are never sent."""
    read, write = multiprocessing.Pipe(duplex=False)
    outbox = Outbox(write, lambda reason: None)
    outbox.put("append", 1, ("row",))
    outbox.discard()
    await asyncio.sleep(0)
    assert not read.poll()
    outbox.put("append", 2, ("row",))
    await asyncio.sleep(0)
    assert read.recv() == [("append", 2, ("row",))]


async def test_outbox_reports_a_failed_send_with_its_peer() -> None:
    """A send on a closed pipe calls on_error, naming the peer, instead of raising."""
    read, write = multiprocessing.Pipe(duplex=False)
    errors: list[str] = []
    outbox = Outbox(write, errors.append, peer="spool writer")
    write.close()
    outbox.put("append", 1, ("row",))
    await asyncio.sleep(0)
    assert len(errors) == 1 and errors[0].startswith("spool writer unreachable: ")
    read.close()
