"""The publisher process: the pipeline, kept off the ack path's core.

``relay serve`` answers postbacks in one process and runs the pipeline (normalise, publish
to Kafka, mark done) in a child process, so Kafka work never shares the ack path's event
loop or its interpreter lock. Both open the same spool database; SQLite's WAL lets the
child read while the parent commits, and each side's writes are short transactions.

The two processes talk over two one-way pipes::

    parent -> child   a raw pipe; the parent writes one byte per spool commit ("new rows",
                      non-blocking: a full pipe already means "wake up"); EOF means the
                      parent is gone, and the child stops.
    child -> parent   a multiprocessing Connection carrying reports ``(name, *args)``,
                      applied to the parent's :class:`~relay.observability.Metrics` (what
                      /metrics and /readyz show).

The child stops on SIGTERM: it finishes the batch in hand, flushes the producer and exits;
whatever is unpublished stays pending in the spool. It ignores SIGINT (a terminal's Ctrl-C
reaches the parent, which then stops it). If it dies, the parent starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from relay.observability import Metrics, configure_logging, get_logger
from relay.pipeline import Normaliser, Pipeline
from relay.publish import KafkaPublisher, Topics, ensure_topics
from relay.settings import Settings
from relay.sources import build
from relay.spool import Spool

log = get_logger("relay.worker")

#: The Reporter methods a child may ask the parent to run.
REPORTS = frozenset({"published", "duplicated", "dead_lettered", "noticed",
                     "publish_failed", "kafka"})


class ForwardingReporter:
    """A :class:`~relay.pipeline.Reporter` that sends every report to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _send(self, *message: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def published(self, topic: str, count: int) -> None:
        self._send("published", topic, count)

    def duplicated(self, source: str, count: int) -> None:
        self._send("duplicated", source, count)

    def dead_lettered(self, source: str) -> None:
        self._send("dead_lettered", source)

    def noticed(self, source: str, code: str) -> None:
        self._send("noticed", source, code)

    def publish_failed(self) -> None:
        self._send("publish_failed")

    def kafka(self, connected: bool, problem: str | None) -> None:
        self._send("kafka", connected, problem)


# --- the child --------------------------------------------------------------------------------


def child_main(settings: Settings, wake: Connection, reports: Connection) -> None:
    """Entry point of the publisher process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log.level, settings.log.format)
    try:
        import uvloop

        uvloop.run(_child(settings, wake, reports))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_child(settings, wake, reports))


async def _child(settings: Settings, wake: Connection, reports: Connection) -> None:
    spool = Spool(settings.spool.dir, settings.spool.max_bytes)
    await asyncio.to_thread(spool.open)
    cfg = settings.kafka
    topics = Topics(cfg.topic_prefix)
    pipeline = Pipeline(
        spool, Normaliser(build(settings)), KafkaPublisher(cfg), topics,
        ForwardingReporter(reports), dedup_window=settings.spool.dedup_window_hours * 3600,
        ensure=lambda: ensure_topics(cfg, topics.all()))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
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
            stop.set()

    loop.add_reader(fd, on_wake)
    task = asyncio.create_task(pipeline.run(), name="relay-pipeline")
    log.info("publisher_started", pid=os.getpid())
    try:
        await stop.wait()
    finally:
        loop.remove_reader(fd)
        await pipeline.stop(settings.server.shutdown_timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(spool.close)
        log.info("publisher_stopped")


# --- the parent's handle --------------------------------------------------------------------


class Worker:
    """Starts, wakes, watches and stops the publisher process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._process: BaseProcess | None = None
        self._wake_fd: int | None = None
        self._reports: Connection | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        wake_read, wake_write = ctx.Pipe(duplex=False)
        report_read, report_write = ctx.Pipe(duplex=False)
        process = ctx.Process(target=child_main, name="relay-publisher", daemon=True,
                              args=(self.settings, wake_read, report_write))
        process.start()
        wake_read.close()
        report_write.close()
        self._wake_fd = os.dup(wake_write.fileno())
        wake_write.close()
        os.set_blocking(self._wake_fd, False)
        self._reports = report_read
        asyncio.get_running_loop().add_reader(report_read.fileno(), self._read_reports)
        self._process = process
        self.wake()  # rows may be pending from before

    def _close_pipes(self) -> None:
        if self._reports is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._reports.fileno())
            self._reports.close()
            self._reports = None
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None

    def _read_reports(self) -> None:
        conn = self._reports
        if conn is None:
            return
        try:
            while conn.poll():
                name, *args = conn.recv()
                if name in REPORTS:
                    getattr(self.metrics, name)(*args)
        except (EOFError, OSError):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())

    async def start(self) -> None:
        """Start the publisher process and a watcher that restarts it if it dies."""
        self._spawn()
        self._watch = asyncio.create_task(self._watchdog(), name="relay-publisher-watch")

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
        self._close_pipes()

    @property
    def pid(self) -> int | None:
        """The publisher's process id, while it runs."""
        return self._process.pid if self._process is not None else None

