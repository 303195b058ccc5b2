"""The publisher process: the pipeline, kept off the ack path's core.

``relay serve`` answers postbacks in one process and runs the pipeline (normalise, publish
to Kafka, mark done) in a child process, so Kafka work never shares the ack path's event
loop or its interpreter lock. The child reads the spool database through its own
connection (WAL readers never block the writer). When Kafka has acknowledged a batch, it
adds the event ids to the dedup record ``seen.db`` itself (:mod:`relay.seen`: random-key
writes, kept off the spool's commits and made at the child's idle priority), then asks
the parent to mark the rows done; the parent hands that to the spool's only writer (the
spool writer process, :mod:`relay.writer`, under ``relay serve``), so group commits never
wait on another process's lock. Parent and child talk over three one-way pipes::

    parent -> child   wake: a raw pipe; one byte per spool commit ("new rows";
                      non-blocking: a full pipe already means "wake up"); EOF means the
                      parent is gone, and the child stops. The child watches it only
                      while its pipeline waits for new rows (``Pipeline.listen``).
    child -> parent   requests: a multiprocessing Connection carrying, one list per
                      event-loop iteration, reports ``(name, *args)`` applied to the
                      parent's :class:`~relay.observability.Metrics` (what /metrics and
                      /readyz show) and ``("complete", n, marks, stamp)``: mark rows
                      done, marks being ``(raw_id, state, error)`` tuples (the parent
                      relays them to the spool writer process without unpacking them).
    parent -> child   replies: ``("ok", n, None)`` once those outcomes are committed, or
                      ``("error", n, text)``.

While the ack path is busy, the child starts no new batch: the parent samples its own
CPU use every 0.1 s (:class:`BurstGate`) and, above ``[server] publisher_pause_above``,
sets a time in shared memory until which the child holds (``hold``), for at most
``publisher_pause_max_seconds`` a burst. SCHED_IDLE alone leaves the ack path sharing
the machine with the publisher, the broker and the writes that mark rows done; holding
gives a burst the whole machine, and the backlog is published once it ends, or at once
when the spool is half full.

The child stops on SIGTERM: it finishes the batches in flight, flushes the producer and exits;
whatever is unpublished stays pending in the spool. It ignores SIGINT (a terminal's Ctrl-C
reaches the parent, which then stops it). If it dies, the parent starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized

from relay.errors import SpoolUnavailable
from relay.observability import Metrics, configure_logging, get_logger
from relay.pipeline import Normaliser, Pipeline
from relay.pipes import Frames, Outbox
from relay.publish import KafkaPublisher, Topics, ensure_topics
from relay.schema import RawPostback
from relay.settings import Settings
from relay.sources import build
from relay.spool import Mark, Outcome, Spool, marks

log = get_logger("relay.worker")

_GATE_PERIOD = 0.1  # s between samples of the ack path's CPU use

#: The Reporter methods a child may ask the parent to run.
REPORTS = frozenset({"published", "duplicated", "dead_lettered", "noticed",
                     "publish_failed", "kafka"})


class ForwardingReporter:
    """A :class:`~relay.pipeline.Reporter` that sends every report to the parent."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def published(self, topic: str, count: int) -> None:
        self.outbox.put("published", topic, count)

    def duplicated(self, source: str, count: int) -> None:
        self.outbox.put("duplicated", source, count)

    def dead_lettered(self, source: str) -> None:
        self.outbox.put("dead_lettered", source)

    def noticed(self, source: str, code: str) -> None:
        self.outbox.put("noticed", source, code)

    def publish_failed(self) -> None:
        self.outbox.put("publish_failed")

    def kafka(self, connected: bool, problem: str | None) -> None:
        self.outbox.put("kafka", connected, problem)


# --- the child --------------------------------------------------------------------------------


class RemoteStore:
    """The child's spool: reads and seen ids on its own connections, marks through the parent."""

    def __init__(self, spool: Spool, requests: Connection, replies: Connection) -> None:
        self.spool = spool
        self.outbox = Outbox(requests, self.fail_all)
        self.replies = Frames(replies.fileno())
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._next = 0

    def pending(self, after: int = 0, limit: int = 500) -> list[RawPostback]:
        return self.spool.pending(after, limit)

    def seen_ids(self, event_ids: Iterable[str], since: float) -> set[str]:
        return self.spool.seen_ids(event_ids, since)

    async def complete(self, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """Add the event ids to ``seen.db``, then ask the parent to mark the rows done;
        returns once that is committed."""
        stamp = time.time() if now is None else now
        self.spool.remember(outcomes, stamp)
        self._next += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        self.outbox.put("complete", self._next, marks(outcomes), stamp)
        await future

    def on_reply(self) -> None:
        """Resolve the requests the parent answered (the replies pipe is readable)."""
        messages = self.replies.read()
        for kind, number, error in messages:
            future = self._waiting.pop(number, None)
            if future is None or future.done():
                continue
            if kind == "ok":
                future.set_result(None)
            else:
                future.set_exception(SpoolUnavailable(str(error)))
        if self.replies.closed:
            self.fail_all("parent gone")

    def fail_all(self, reason: str) -> None:
        """Fail every request still waiting."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SpoolUnavailable(reason))
        self._waiting.clear()


def lower_priority(idle: bool, nice: int) -> str:
    """Give this process's CPU time to the ack path first; returns the policy it got.

    ``idle``: Linux's ``SCHED_IDLE``, under which a process runs only when no process at
    normal priority wants the CPU, and a waking one (the ack path) takes the CPU from it at
    once. Else, or where the OS refuses it, ``nice`` (0 to 19) lower.
    """
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:
            pass
    if nice:
        os.nice(nice)
    return f"nice {nice}"


@dataclass
class BurstGate:
    """Whether the ack path is busy enough for publishing to hold off.

    :meth:`sample` is called every 0.1 s in the main process. It measures the share of
    one core that process used since the last sample. At or above ``threshold``,
    publishing holds until ``linger`` s after the last busy sample. A hold lasts at
    most ``max_hold`` s: a longer burst is load to live with, and publishing goes on
    (at its idle priority) until a quiet sample ends it. It never holds while the spool
    is at least half full: then the backlog must shrink, burst or not. ``cpu_time`` and
    ``clock`` are injectable for tests.
    """

    threshold: float
    max_hold: float = 30.0
    linger: float = 0.3
    cpu_time: Callable[[], float] = time.process_time
    clock: Callable[[], float] = time.monotonic
    until: float = 0.0  # a ``clock`` time; publishing holds while clock() < until
    share: float = 0.0  # the last sample's CPU share
    _last: tuple[float, float] | None = field(default=None, repr=False)
    _since: float | None = field(default=None, repr=False)  # when the current hold began
    _spent: bool = field(default=False, repr=False)  # a hold ran out; no new one yet

    def sample(self, bytes_used: int, max_bytes: int) -> bool:
        """Take a sample; returns whether publishing holds now."""
        now, cpu = self.clock(), self.cpu_time()
        last, self._last = self._last, (now, cpu)
        if last is None or now <= last[0]:
            return self.holding(now)
        self.share = (cpu - last[1]) / (now - last[0])
        busy = self.threshold > 0 and self.share >= self.threshold
        self._spent = self._spent and busy
        if bytes_used * 2 >= max_bytes or self._spent:
            self.until = 0.0
        elif busy:
            self._since = now if self._since is None else self._since
            self._spent = now - self._since >= self.max_hold
            self.until = 0.0 if self._spent else now + self.linger
        held = self.holding(now)
        if not held:
            self._since = None
        return held

    def holding(self, now: float | None = None) -> bool:
        """Whether publishing holds at ``now`` (default: the clock's now)."""
        return (self.clock() if now is None else now) < self.until


def child_main(settings: Settings, wake: Connection, requests: Connection,
               replies: Connection, hold_until: Synchronized[float] | None = None) -> None:
    """Entry point of the publisher process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    priority = lower_priority(settings.server.publisher_idle, settings.server.publisher_nice)
    configure_logging(settings.log.level, settings.log.format)
    try:
        import uvloop

        uvloop.run(_child(settings, wake, requests, replies, priority, hold_until))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_child(settings, wake, requests, replies, priority, hold_until))


def _hold(until: Synchronized[float] | None) -> Callable[[], float] | None:
    """Seconds left of the parent's hold (a time.monotonic() time: one clock for all
    processes on Linux)."""
    if until is None:
        return None
    return lambda: until.value - time.monotonic()


async def _child(settings: Settings, wake: Connection, requests: Connection,
                 replies: Connection, priority: str,
                 hold_until: Synchronized[float] | None) -> None:
    spool = Spool(settings.spool.dir, settings.spool.max_bytes).open_reader()
    store = RemoteStore(spool, requests, replies)
    cfg = settings.kafka
    topics = Topics(cfg.topic_prefix)
    pipeline = Pipeline(
        store, Normaliser(build(settings)), KafkaPublisher(cfg), topics,
        ForwardingReporter(store.outbox), dedup_window=settings.spool.dedup_window_hours * 3600,
        ensure=lambda: ensure_topics(cfg, topics.all()), read_in_thread=False,
        hold=_hold(hold_until), linger=cfg.batch_linger_ms / 1000)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_reply() -> None:
        store.on_reply()
        if store.replies.closed:  # the parent is gone (the wake pipe may not be watched)
            loop.remove_reader(replies.fileno())
            stop.set()

    loop.add_reader(replies.fileno(), on_reply)
    fd = wake.fileno()
    os.set_blocking(fd, False)

    def on_wake() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            pipeline.wake()
        else:  # EOF: the parent is gone
            store.fail_all("parent gone")
            stop.set()

    watching = True
    loop.add_reader(fd, on_wake)

    def listen(on: bool) -> None:
        """Watch the wake pipe only while the pipeline waits for new rows: the rest of the
        time a byte per commit would only wake this process for nothing. The bytes wait
        in the pipe, so a commit made meanwhile still ends the next wait at once."""
        nonlocal watching
        on = on and not stop.is_set()
        if on != watching:
            watching = on
            if on:
                loop.add_reader(fd, on_wake)
            else:
                loop.remove_reader(fd)

    pipeline.listen = listen
    task = asyncio.create_task(pipeline.run(), name="relay-pipeline")
    log.info("publisher_started", pid=os.getpid(), priority=priority)
    try:
        await stop.wait()
    finally:
        listen(False)
        await pipeline.stop(settings.server.shutdown_timeout)
        loop.remove_reader(replies.fileno())  # a no-op if on_reply already did
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(spool.close)
        log.info("publisher_stopped")


# --- the parent's handle --------------------------------------------------------------------


class Worker:
    """Starts, wakes, watches and stops the publisher process."""

    def __init__(self, settings: Settings, metrics: Metrics, spool: Spool) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = spool
        self._process: BaseProcess | None = None
        self._wake_fd: int | None = None
        self._reports: Connection | None = None
        self._frames: Frames | None = None
        self._replies: Connection | None = None
        self._completing: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._ctx = multiprocessing.get_context("spawn")  # the child's pipes and shared hold
        self._hold_until: Synchronized[float] = self._ctx.Value("d", 0.0)
        self.gate = BurstGate(settings.server.publisher_pause_above,
                              settings.server.publisher_pause_max_seconds)
        self._gate_task: asyncio.Task[None] | None = None

    def _spawn(self) -> None:
        ctx = self._ctx
        wake_read, wake_write = ctx.Pipe(duplex=False)
        report_read, report_write = ctx.Pipe(duplex=False)
        reply_read, reply_write = ctx.Pipe(duplex=False)
        process = ctx.Process(target=child_main, name="relay-publisher", daemon=True,
                              args=(self.settings, wake_read, report_write, reply_read,
                                    self._hold_until))
        process.start()
        wake_read.close()
        report_write.close()
        reply_read.close()
        self._replies = reply_write
        self._wake_fd = os.dup(wake_write.fileno())
        wake_write.close()
        os.set_blocking(self._wake_fd, False)
        self._reports = report_read
        self._frames = Frames(report_read.fileno())
        asyncio.get_running_loop().add_reader(report_read.fileno(), self._read_reports)
        self._process = process
        self.wake()  # rows may be pending from before

    def _close_pipes(self) -> None:
        if self._reports is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._reports.fileno())
            self._reports.close()
            self._reports = None
            self._frames = None
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._replies is not None:
            self._replies.close()
            self._replies = None

    def _read_reports(self) -> None:
        frames = self._frames
        if frames is None:
            return
        messages = frames.read()
        for name, *args in (report for message in messages for report in message):
            if name == "complete":
                task = asyncio.get_running_loop().create_task(
                    self._complete(self._replies, *args))
                self._completing.add(task)
                task.add_done_callback(self._completing.discard)
            elif name in REPORTS:
                getattr(self.metrics, name)(*args)
        if frames.closed:  # the child is gone; the watchdog starts a new one
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(frames.fd)

    async def _complete(self, replies: Connection | None, number: int,
                        rows: tuple[Mark, ...], stamp: float) -> None:
        """Mark a child's rows done and answer that same child (not a successor)."""
        reply: tuple[str, int, str | None] = ("ok", number, None)
        try:
            await self.spool.mark(rows, stamp)
        except Exception as exc:
            reply = ("error", number, f"{type(exc).__name__}: {exc}")
        if replies is not None:
            with contextlib.suppress(OSError, ValueError):
                replies.send(reply)

    async def start(self) -> None:
        """Start the publisher process and a watcher that restarts it if it dies."""
        self._spawn()
        self._watch = asyncio.create_task(self._watchdog(), name="relay-publisher-watch")
        if self.gate.threshold > 0:
            self._gate_task = asyncio.create_task(self._watch_load(), name="relay-burst-gate")

    async def _watch_load(self) -> None:
        """Sample the ack path's CPU use every 0.1 s; hold publishing while it is busy."""
        holding = False
        while True:
            await asyncio.sleep(_GATE_PERIOD)
            paused = self.gate.sample(self.spool.bytes_used, self.spool.max_bytes)
            self._hold_until.value = self.gate.until
            if paused != holding:
                holding = paused
                self.metrics.publisher_paused.set(1 if paused else 0)
                log.info("publisher_paused" if paused else "publisher_resumed",
                         cpu=round(self.gate.share, 2), spool_bytes=self.spool.bytes_used)

    async def _watchdog(self) -> None:
        delay = 1.0
        while not self._stopping:
            process = self._process
            assert process is not None
            await asyncio.to_thread(process.join, 1.0)
            if process.exitcode is None or self._stopping:
                continue
            log.error("publisher_died", exitcode=process.exitcode, restart_in=delay)
            self.metrics.kafka(False, f"publisher process exited ({process.exitcode})")
            self._close_pipes()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            if not self._stopping:
                self._spawn()

    def wake(self) -> None:
        """Tell the publisher new rows were committed (never blocks)."""
        if self._wake_fd is not None:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
                os.write(self._wake_fd, b"\x01")

    async def stop(self, grace: float) -> None:
        """SIGTERM the publisher and wait for it to flush and exit (then SIGKILL)."""
        self._stopping = True
        process = self._process
        if self._gate_task is not None:
            self._gate_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gate_task
        self._hold_until.value = 0.0  # the child publishes what it can before it stops
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if process is not None and process.exitcode is None:
            process.terminate()
            await asyncio.to_thread(process.join, grace + 5)
            if process.exitcode is None:
                log.error("publisher_killed", detail="did not stop in time")
                process.kill()
                await asyncio.to_thread(process.join, 5)
        self._read_reports()
        if self._completing:  # commit what the publisher reported done before the spool stops
            await asyncio.gather(*self._completing, return_exceptions=True)
        self._close_pipes()

    @property
    def pid(self) -> int | None:
        """The publisher's process id, while it runs."""
        return self._process.pid if self._process is not None else None

