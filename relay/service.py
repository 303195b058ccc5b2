"""relay's parts wired together, without any web framework.

:class:`Service` owns the spool, the sources, the pipeline task and the pruner; the web
app (``relay.app``) and the CLI drive it through :meth:`Service.start`,
:meth:`Service.receive` and :meth:`Service.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from relay.errors import ConfigError, PublishError, UnknownSource
from relay.observability import Metrics, get_logger
from relay.pipeline import Normaliser, Pipeline
from relay.publish import Publisher, Topics, ensure_topics
from relay.schema import RawPostback
from relay.settings import Settings
from relay.sources import Source, build
from relay.spool import Spool
from relay.verify import ClientAddresses, Request
from relay.worker import Worker
from relay.writer import SpoolProcess

log = get_logger("relay.service")


class Service:
    """The running relay: receive postbacks; publish them in the background.

    The spool's writes are made by a writer process (:mod:`relay.writer`), and with Kafka
    configured, publishing runs in a publisher process (:mod:`relay.worker`): the event
    loop here only receives, verifies and answers. A ``publisher`` passed in (tests) runs
    the same pipeline as a task in this process, on a spool written in this process.
    """

    def __init__(self, settings: Settings, *, publisher: Publisher | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.sources: dict[str, Source] = dict(build(settings))
        self.topics = Topics(settings.kafka.topic_prefix)
        self.addresses = ClientAddresses(settings.server.trusted_proxies)
        self.spool: Spool
        if publisher is not None:
            self.spool = Spool(settings.spool.dir, settings.spool.max_bytes,
                               on_commit=self._committed)
        else:  # the writer process logs like this one
            self.spool = SpoolProcess(settings.spool.dir, settings.spool.max_bytes,
                                      on_commit=self._committed,
                                      logging=(settings.log.level, settings.log.format))
        self.pipeline: Pipeline | None = None
        self.worker: Worker | None = None
        if publisher is not None:
            self.pipeline = Pipeline(
                self.spool, Normaliser(self.sources), publisher, self.topics, self.metrics,
                dedup_window=settings.spool.dedup_window_hours * 3600,
                linger=settings.kafka.batch_linger_ms / 1000, clock=clock)
        elif settings.kafka.configured:
            self.worker = Worker(settings, self.metrics, self.spool)
        self._tasks: list[asyncio.Task[Any]] = []

    def _committed(self) -> None:
        if self.worker is not None:
            self.worker.wake()
        elif self.pipeline is not None:
            self.pipeline.wake()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, check Kafka's topics, start the publisher and the pruner.

        Raises :class:`ConfigError` if Kafka answers and a topic is missing (and may not be
        created). Kafka unreachable is not an error: postbacks wait in the spool.
        """
        await self.spool.start()
        if not self.settings.kafka.configured and self.pipeline is None:
            log.warning("kafka_not_configured",
                        detail="no [kafka] bootstrap_servers: postbacks are acknowledged and "
                        "wait in the spool until Kafka is configured")
        if self.worker is not None:
            await self._check_topics()
            await self.worker.start()
        if self.pipeline is not None:
            self._tasks.append(asyncio.create_task(self.pipeline.run(), name="relay-pipeline"))
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="relay-pruner"))
        log.info("relay_started", sources=sorted(self.sources), spool=str(self.spool.path),
                 kafka=list(self.settings.kafka.bootstrap_servers))

    async def _check_topics(self) -> None:
        try:
            created = await asyncio.wait_for(
                ensure_topics(self.settings.kafka, self.topics.all()), 15)
        except ConfigError as exc:
            log.error("kafka_topics_missing", problem=str(exc))
            await self.spool.stop()
            raise
        except (PublishError, TimeoutError) as exc:
            problem = str(exc) or "timeout"
            self.metrics.kafka(False, problem)
            log.warning("kafka_unreachable_at_start", problem=problem,
                        detail="postbacks are acknowledged and wait in the spool")
            return
        if created:
            log.info("kafka_topics_created", topics=created)

    async def stop(self) -> None:
        """Stop the publisher (it flushes the producer), the tasks, then close the spool."""
        timeout = self.settings.server.shutdown_timeout
        if self.worker is not None:
            await self.worker.stop(timeout)
        if self.pipeline is not None:
            await self.pipeline.stop(timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.spool.stop()
        log.info("relay_stopped")

    async def _prune_loop(self) -> None:
        cfg = self.settings.spool
        while True:
            await asyncio.sleep(cfg.prune_interval_seconds)
            now = self.clock()
            try:
                removed = await self.spool.prune(older_than=now - cfg.retention_hours * 3600,
                                                 seen_before=now - cfg.dedup_window_hours * 3600)
            except Exception as exc:
                log.warning("prune_failed", problem=str(exc))
                continue
            if removed:
                log.info("spool_pruned", rows=removed)

    # --- the ack path ------------------------------------------------------------------------

    def source_for(self, name: str, token: str | None) -> Source:
        """The source a URL names (a token segment only on token sources), or 404."""
        source = self.sources.get(name)
        if source is None or (token is not None and not source.uses_token):
            raise UnknownSource(f"no source {name!r}")
        return source

    def receive(self, source: Source, req: Request) -> asyncio.Future[int]:
        """Check, verify and durably spool one postback: a future of its raw_id, done once
        the postback is on disk.

        The body size was already enforced by the web layer (it streams the body).
        Raises a :class:`~relay.errors.HookError` for every refusal; the future fails with
        :class:`~relay.errors.SpoolUnavailable` if the spool cannot take the write.
        """
        address = self.addresses.resolve(req.peer, req.headers.get("x-forwarded-for"))
        source.allowlist.check(address)
        now = self.clock()
        source.verifier.verify(req, now)
        kept = tuple((k, v) for k, v in req.headers.items() if k in source.kept_headers)
        # Positional: the fields in order (source, received_at, remote_addr, method, path,
        # query, headers, body). The path stored is the route's, a URL token masked.
        raw = RawPostback(source.name, now, address, req.method, source.stored_path(req.token),
                          req.query, kept, req.body)
        return self.spool.append(raw)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether relay can take postbacks now, and why (the /readyz body).

        The counts are read in a thread: the event loop serves acks meanwhile.
        """
        stats = await asyncio.to_thread(self.spool.stats)
        self.metrics.backlog.set(stats.pending)
        self.metrics.spool_bytes.set(stats.bytes)
        spool_ok = self.spool.broken is None and stats.bytes < self.spool.max_bytes
        body: dict[str, Any] = {
            "spool": "ok" if spool_ok else (self.spool.broken or "over its size cap"),
            "pending": stats.pending, "dead_letters": stats.dead, "spool_bytes": stats.bytes,
        }
        if self.worker is None and self.pipeline is None:
            body["kafka"] = "not configured: postbacks wait in the spool"
        elif not self.metrics.kafka_connected:
            problem = self.metrics.kafka_problem or "connecting"
            body["kafka"] = f"unreachable: postbacks wait in the spool ({problem})"
        else:
            body["kafka"] = "connected"
        return spool_ok, body
