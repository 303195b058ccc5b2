"""The ``relay`` command: a thin layer over the package, and the only user of uvicorn.

::

    relay serve [--config FILE]        run the service (config also from $RELAY_CONFIG)
    relay check-config FILE            validate a configuration file and exit
    relay dead-letters [--config FILE] list dead-lettered postbacks
    relay replay [--config FILE] ...   re-run stored postbacks (see relay replay --help)
    relay status-table                 print the providers' status mappings (Markdown)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from relay.errors import ConfigError
from relay.replay import add_parser as add_replay
from relay.settings import Settings, load


def _settings(path: str | None) -> Settings:
    path = path or os.environ.get("RELAY_CONFIG")
    if not path:
        raise ConfigError("config", "no configuration: pass --config FILE or set RELAY_CONFIG")
    return load(path)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run relay until SIGTERM/SIGINT, then drain and exit 0."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown (exit -15); relay's
        shutdown is complete by then, so it exits 0 instead."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {s: signal.signal(s, self.handle_exit)
                        for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    from relay.app import create_app
    from relay.observability import configure_logging
    from relay.service import Service

    settings = _settings(args.config)
    configure_logging(settings.log.level, settings.log.format)
    service = Service(settings)
    config = uvicorn.Config(
        create_app(service), host=args.host or settings.server.host,
        port=settings.server.port if args.port is None else args.port,
        loop="uvloop", http="httptools", lifespan="on", access_log=False,
        log_level="warning", timeout_graceful_shutdown=int(settings.server.shutdown_timeout),
        server_header=False, proxy_headers=False,
    )
    server = Server(config)
    server.run()
    return 0 if server.started else 1


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a configuration file, including sources' provider options."""
    from relay.sources import build

    settings = load(args.file)
    sources = build(settings)
    print(f"{args.file}: ok ({len(sources)} sources: {', '.join(sources) or 'none'}; "
          f"kafka: {', '.join(settings.kafka.bootstrap_servers) or 'not configured'})")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List dead-lettered postbacks: id, source, time, size, error."""
    from relay.spool import Spool

    settings = _settings(args.config)
    with Spool(settings.spool.dir, settings.spool.max_bytes) as spool:
        rows = spool.dead_letters(args.limit)
    if args.json:
        import orjson

        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return 0
    print(f"{'RAW_ID':>8}  {'SOURCE':<16} {'RECEIVED_AT':<24} {'SIZE':>7}  ERROR")
    for row in rows:
        when = datetime.fromtimestamp(row.received_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{row.raw_id:>8}  {row.source:<16} {when:<24} {row.size:>7}  {row.error}")
    print(f"{len(rows)} dead letter(s)")
    return 0


def cmd_status_table(args: argparse.Namespace) -> int:
    """Print every provider's status mapping table as Markdown."""
    from relay.statustable import render

    sys.stdout.write(render())
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``relay``."""
    p = argparse.ArgumentParser(prog="relay", description="relay: messaging webhook relay")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run relay")
    serve.add_argument("--config", help="TOML config file (default: $RELAY_CONFIG)")
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    dead = sub.add_parser("dead-letters", help="list dead-lettered postbacks")
    dead.add_argument("--config", help="TOML config file (default: $RELAY_CONFIG)")
    dead.add_argument("--limit", type=int, default=1000)
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    dead.set_defaults(func=cmd_dead_letters)

    table = sub.add_parser("status-table", help="print the providers' status mappings")
    table.set_defaults(func=cmd_status_table)

    add_replay(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relay`` command."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
