"""The spool writer process: durable commits off the ack path's event loop.

Committing a group (SQLite's inserts, the WAL write and its fsync) costs the committing
thread about 0.2 ms of CPU and 0.5 ms of waiting for the disk here, and a commit made on
the event loop serves no request meanwhile; a commit thread would have to win the GIL
back from the busy loop after every fsync. So ``relay serve`` has a child process, the
spool's only writer, make every write; the main process keeps a read-only connection
and its event loop only parses, verifies and answers.

Protocol: two one-way pipes (``multiprocessing`` connections)::

    main -> writer   one message per event-loop flush: a list of requests
                       ("append", n, row)                   a row as Spool._row makes it
                       ("call", n, fn)                       a picklable write (completions)
                       ("prune", n, older_than, seen_before)
                     EOF: finish, close the spool (checkpoint), exit.
    writer -> main   ("ready", bytes_used) once the spool is open, or ("failed", text);
                     then ("done", [(n, value, error)], bytes_used, broken) per group,
                     error None or (detail, retry_after).

The writer reads every message waiting, runs them as one group (:meth:`Spool.transact`:
one transaction, one fsync) and answers with one message, so requests that arrive while
a group commits share the next commit. Pruning runs in a thread of the writer, in short
transactions that the spool's lock serialises with the groups. The writer ignores SIGINT
and SIGTERM: it stops when the main process closes the pipe (after the requests in
flight are answered), or when the main process dies. If it dies, pending requests fail
with :class:`~relay.errors.SpoolUnavailable` (503 and Retry-After for postbacks) and the
main process starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import multiprocessing
import select
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from relay.errors import SpoolUnavailable
from relay.observability import configure_logging, get_logger
from relay.pipes import Frames, Outbox, send
from relay.spool import Spool, WriteOp, WriteResult

log = get_logger("relay.writer")

_PIPE_BYTES = 1 << 20  # pipe capacity asked for: a flush never waits for the writer
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_START_TIMEOUT = 60.0
_RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)

Reply = tuple[int, Any, tuple[str, int] | None]


# --- the writer process -------------------------------------------------------------------------


def _error(exc: BaseException | None) -> tuple[str, int] | None:
    if exc is None:
        return None
    if isinstance(exc, SpoolUnavailable):
        return (str(exc), exc.retry_after)
    return (f"{type(exc).__name__}: {exc}", 5)


class _Writer:
    """The writer's loop: read requests, commit them in groups, answer."""

    def __init__(self, spool: Spool, requests: Connection, replies: Connection) -> None:
        self.spool = spool
        self.frames = Frames(requests.fileno())
        self.replies = replies
        self.send_lock = threading.Lock()  # the prune threads answer too
        self.prunes: list[threading.Thread] = []

    def send(self, results: list[Reply]) -> None:
        with self.send_lock, contextlib.suppress(OSError, ValueError):
            send(self.replies, ("done", results, self.spool.bytes_used, self.spool.broken))

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.frames.fd, select.POLLIN)
        while not self.frames.closed:
            poller.poll()
            group: list[WriteOp] = []
            numbers: dict[int, int] = {}
            for message in self.frames.read():
                for request in message:
                    self.take(request, group, numbers)
            if group:
                self.send([(numbers[id(op)], value, _error(exc))
                           for op, value, exc in self.spool.transact(group)])
        for thread in self.prunes:
            thread.join()

    def take(self, request: tuple[Any, ...], group: list[WriteOp],
             numbers: dict[int, int]) -> None:
        kind, number, *args = request
        if kind == "prune":
            thread = threading.Thread(target=self.prune, args=(number, *args), daemon=True)
            self.prunes = [t for t in self.prunes if t.is_alive()] + [thread]
            thread.start()
            return
        op = WriteOp(None, row=args[0]) if kind == "append" else WriteOp(args[0])
        numbers[id(op)] = number
        group.append(op)

    def prune(self, number: int, older_than: float, seen_before: float) -> None:
        try:
            reply: Reply = (number, self.spool.prune_sync(older_than=older_than,
                                                          seen_before=seen_before), None)
        except Exception as exc:
            reply = (number, None, _error(exc))
        self.send([reply])


def writer_main(directory: Path, max_bytes: int, requests: Connection,
                replies: Connection, logging: tuple[str, str] | None = None) -> None:
    """Entry point of the writer process (``logging``: level and format, as relay's)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if logging is not None:
        configure_logging(*logging)
    try:
        spool = Spool(directory, max_bytes).open()
    except Exception as exc:
        replies.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    try:
        replies.send(("ready", spool.bytes_used))
        _Writer(spool, requests, replies).run()
    finally:
        spool.close()


# --- the main process's side ----------------------------------------------------------------------


def _widen(conn: Connection) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)


class SpoolProcess(Spool):
    """A :class:`Spool` whose writes a writer process makes; reads stay in this process.

    :meth:`append`, :meth:`complete` and :meth:`prune` send requests and return once
    the writer has committed them (fsynced, for appends). Requests made in one event-loop
    iteration go in one message. Start with :meth:`start` and stop with :meth:`stop`
    (the blocking :meth:`open`/:meth:`close` are not for this class).
    """

    def __init__(self, directory: Path, max_bytes: int, *,
                 on_commit: Callable[[], None] | None = None,
                 logging: tuple[str, str] | None = None) -> None:
        super().__init__(directory, max_bytes, on_commit=on_commit)
        self._logging = logging  # the writer's log level and format
        self._outbox: Outbox | None = None  # requests to the writer, while it runs
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._appends: set[int] = set()
        self._number = 0
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._frames: Frames | None = None
        self._stopping = False
        self._restarting: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer (it creates or opens the database), then open for reading."""
        self._stopping = False
        await asyncio.to_thread(self._spawn)
        self.open_reader()
        self._watch()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        request_read, request_write = ctx.Pipe(duplex=False)
        reply_read, reply_write = ctx.Pipe(duplex=False)
        _widen(request_write)
        _widen(reply_write)
        process = ctx.Process(target=writer_main, name="relay-spool-writer", daemon=True,
                              args=(self.path.parent, self.max_bytes, request_read, reply_write,
                                    self._logging))
        process.start()
        request_read.close()
        reply_write.close()
        if not reply_read.poll(_START_TIMEOUT):
            process.kill()
            raise SpoolUnavailable("the spool writer did not start")
        try:
            kind, detail = reply_read.recv()
        except EOFError:
            process.join(5)
            kind, detail = "failed", f"exit code {process.exitcode}"
        if kind != "ready":
            process.join(5)
            raise SpoolUnavailable(f"the spool writer could not open the spool: {detail}")
        self._bytes = int(detail)
        self._process, self._requests, self._replies = process, request_write, reply_read
        self._outbox = Outbox(request_write, self._lost, peer="spool writer")
        self._frames = Frames(reply_read.fileno())

    def _watch(self) -> None:
        assert self._frames is not None
        asyncio.get_running_loop().add_reader(self._frames.fd, self._on_replies)

    async def stop(self) -> None:
        """Wait for the requests in flight (up to 30 s), stop the writer, close."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self._outbox is not None:
            self._outbox.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._waiting.values(), return_exceptions=True), 30)
        self._disconnect("spool is stopping")
        process, self._process = self._process, None
        if process is not None:
            await asyncio.to_thread(process.join, 30)
            if process.exitcode is None:
                log.error("spool_writer_killed", detail="did not stop in time")
                process.kill()
        await asyncio.to_thread(self.close)

    def _disconnect(self, reason: str) -> None:
        """Close the pipes (EOF tells the writer to stop) and fail what still waits."""
        if self._frames is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._frames.fd)
            self._frames = None
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._requests = self._replies = None
        if self._outbox is not None:
            self._outbox.discard()
            self._outbox = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SpoolUnavailable(reason))
        self._waiting.clear()
        self._appends.clear()

    async def _restart(self) -> None:
        attempt = 0
        while not self._stopping:
            await asyncio.sleep(_RESTART_DELAYS[min(attempt, len(_RESTART_DELAYS) - 1)])
            attempt += 1
            if self._stopping:
                return
            try:
                await asyncio.to_thread(self._spawn)
            except SpoolUnavailable as exc:
                log.error("spool_writer_failed", problem=str(exc))
                self._broken = str(exc)
                continue
            self._broken = None
            self._watch()
            log.info("spool_writer_restarted", pid=self.pid)
            return

    @property
    def pid(self) -> int | None:
        """The writer's process id, while it runs."""
        return self._process.pid if self._process is not None else None

    # --- requests ------------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any] | None,
                row: tuple[Any, ...] | None = None) -> asyncio.Future[Any]:
        if row is not None:
            return self._request("append", row)
        return self._request("call", fn)

    async def prune(self, *, older_than: float, seen_before: float) -> int:
        """Prune in the writer (in a thread there, in short transactions)."""
        return int(await self._request("prune", older_than, seen_before))

    def _request(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        outbox = self._outbox
        if outbox is None:
            raise SpoolUnavailable(self._broken or "spool is not open")
        loop = asyncio.get_running_loop()
        self._number += 1
        number = self._number
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting[number] = future
        if kind == "append":
            self._appends.add(number)
        outbox.put(kind, number, *args)
        return future

    def _on_replies(self) -> None:
        frames = self._frames
        if frames is None:
            return
        messages = frames.read()
        appended = False
        for _, results, used, broken in messages:
            self._bytes, self._broken = used, broken
            for number, value, error in results:
                appended |= self._resolve(number, value, error)
        if appended and self.on_commit is not None:
            self.on_commit()
        if frames.closed:
            self._lost("the spool writer exited")

    def _resolve(self, number: int, value: Any, error: tuple[str, int] | None) -> bool:
        """Settle one request; True for an append that was stored."""
        future = self._waiting.pop(number, None)
        append = number in self._appends
        self._appends.discard(number)
        if future is None or future.done():
            return False
        if error is None:
            future.set_result(value)
            return append
        future.set_exception(SpoolUnavailable(error[0], retry_after=error[1]))
        return False

    def _lost(self, reason: str) -> None:
        """The writer is gone: fail what waits and (unless stopping) start a new one."""
        if self._requests is None:
            return
        log.error("spool_writer_lost", problem=reason)
        self._broken = reason
        self._disconnect(reason)
        process, self._process = self._process, None
        if process is not None:
            process.join(0)
        if not self._stopping:
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    # --- what needs a writer in this process ------------------------------------------------

    def open(self) -> SpoolProcess:
        """Not for this class: use :meth:`start`."""
        raise TypeError("SpoolProcess is started with start(), not open()")

    def transact(self, group: list[WriteOp]) -> list[WriteResult]:
        """Writes from this process go through the writer; a synchronous one cannot."""
        raise SpoolUnavailable("this spool is written by its writer process")
