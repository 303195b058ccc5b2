"""relay's configuration: one TOML file, read and validated once at start-up.

Every problem is reported as a :class:`~relay.errors.ConfigError` naming the key
(``sources[1].basic_auth.password``) and what is wrong with it. Secrets are never written
inline: a secret value is ``env:NAME`` (an environment variable) or ``file:PATH`` (a file,
trailing newline stripped), resolved here once into a :class:`Secret` whose repr hides it.

Provider-specific options of a source (signing keys, field mappings...) are kept as the
raw table in ``SourceConfig.options`` and validated by the provider module itself
(``relay.providers``), so adding a provider never touches this file.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_OPT_OUT = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE",
    "ARRET", "ARRÊT", "ALTO", "PARAR", "BAJA", "CANCELAR", "HALT", "STOPP", "ABMELDEN",
)
DEFAULT_OPT_IN = ("START", "UNSTOP", "YES", "SUBSCRIBE")
DEFAULT_HELP = ("HELP", "INFO", "AIDE", "AYUDA")


class Secret:
    """A secret value resolved from an ``env:``/``file:`` reference; never printed."""

    __slots__ = ("_ref", "_value")

    def __init__(self, value: str, ref: str) -> None:
        self._value = value
        self._ref = ref

    def reveal(self) -> str:
        """The secret itself, for the one place that compares or signs with it."""
        return self._value

    @property
    def ref(self) -> str:
        """Where the secret came from (``env:NAME``), safe to log."""
        return self._ref

    def __repr__(self) -> str:
        return f"Secret({self._ref!r})"

    __str__ = __repr__


def resolve_secret(value: object, key: str, environ: Mapping[str, str]) -> Secret:
    """Resolve an ``env:NAME`` or ``file:PATH`` reference found at ``key``."""
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string 'env:NAME' or 'file:PATH'")
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ConfigError(key, "'env:' needs a variable name")
        if name not in environ:
            raise ConfigError(key, f"environment variable {name} is not set")
        secret = environ[name]
    elif value.startswith("file:"):
        path = Path(value[5:])
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
    else:
        raise ConfigError(key, "secrets are not accepted inline: use 'env:NAME' or 'file:PATH'")
    if not secret:
        raise ConfigError(key, f"the secret from {value} is empty")
    return Secret(secret, value)


@dataclass(frozen=True)
class ServerConfig:
    """The ``[server]`` table."""

    host: str = "127.0.0.1"
    port: int = 8080
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 10.0
    publisher_nice: int = 10
    publisher_idle: bool = True
    publisher_pause_above: float = 0.6
    publisher_pause_max_seconds: float = 30.0


@dataclass(frozen=True)
class SpoolConfig:
    """The ``[spool]`` table."""

    dir: Path = Path("var/spool")
    max_bytes: int = 1 << 30
    retention_hours: float = 7 * 24
    dedup_window_hours: float = 48
    prune_interval_seconds: float = 300


@dataclass(frozen=True)
class KafkaConfig:
    """The ``[kafka]`` table; ``bootstrap_servers`` empty means "not configured"."""

    bootstrap_servers: tuple[str, ...] = ()
    topic_prefix: str = "messaging."
    client_id: str = "relay"
    create_topics: bool = False
    partitions: int = 6
    replication_factor: int = 1
    compression: str = "zstd"
    linger_ms: int = 0
    batch_linger_ms: int = 10
    request_timeout_ms: int = 30000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def configured(self) -> bool:
        """Whether a broker is configured at all."""
        return bool(self.bootstrap_servers)


@dataclass(frozen=True)
class LogConfig:
    """The ``[log]`` table."""

    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic credentials a source must present."""

    username: str
    password: Secret


@dataclass(frozen=True)
class Keywords:
    """Inbound keywords (whole message, trimmed, case-insensitive) that mean consent."""

    opt_out: frozenset[str] = frozenset(DEFAULT_OPT_OUT)
    opt_in: frozenset[str] = frozenset(DEFAULT_OPT_IN)
    help: frozenset[str] = frozenset(DEFAULT_HELP)


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[sources]]`` entry: a callback URL ``/hooks/{name}`` and how to trust it."""

    name: str
    provider: str
    allow_ips: tuple[IPNetwork, ...] = ()
    basic_auth: BasicAuth | None = None
    tokens: tuple[Secret, ...] = ()
    default_region: str | None = None
    max_body_bytes: int | None = None
    keywords: Keywords = field(default_factory=Keywords)
    options: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    #: The environment ``env:`` references in provider options resolve against.
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False,
                                       compare=False)

    @property
    def key(self) -> str:
        """This source's position in the file, for error messages."""
        return f"sources[{self.index}]"


@dataclass(frozen=True)
class Settings:
    """The whole configuration."""

    server: ServerConfig
    spool: SpoolConfig
    kafka: KafkaConfig
    log: LogConfig
    sources: tuple[SourceConfig, ...]
    path: Path | None = None

    def source(self, name: str) -> SourceConfig | None:
        """The source named ``name``, or None."""
        for src in self.sources:
            if src.name == name:
                return src
        return None


# --- typed readers: each takes the table, the key, and a default -----------------------


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(_join(where, key), "must be a table")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(_join(where, key), f"must be of type {names}, got {type(value).__name__}")
    return value


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when the key is absent (keeps a false ``False``)."""
    return default if value is None else value


def _positive(value: int | float | None, key: str, default: Any) -> Any:
    if value is None:
        return default
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, "must be a finite number greater than zero")
    return value


def _linger(value: int | None, key: str, default: int) -> int:
    if value is None:
        return default
    if value < 0:
        raise ConfigError(key, "must be zero or more")
    return value


def _unknown_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(_join(where, key), "unknown key")


def _networks(values: object, key: str) -> tuple[IPNetwork, ...]:
    if values is None:
        return ()
    if not isinstance(values, list):
        raise ConfigError(key, "must be a list of CIDR strings")
    nets = []
    for i, value in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ConfigError(f"{key}[{i}]", f"{value!r} is not an IP address or CIDR") from None
    return tuple(nets)


def _words(values: object, key: str, default: tuple[str, ...]) -> frozenset[str]:
    if values is None:
        return frozenset(default)
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise ConfigError(key, "must be a list of non-empty strings")
    return frozenset(v.strip().upper() for v in values)


# --- the tables ---------------------------------------------------------------------------


def _server(data: Mapping[str, Any]) -> ServerConfig:
    w = "server"
    _unknown_keys(data, {"host", "port", "trusted_proxies", "max_body_bytes",
                         "shutdown_timeout", "publisher_nice", "publisher_idle",
                         "publisher_pause_above", "publisher_pause_max_seconds"}, w)
    d = ServerConfig()
    port = _get(data, "port", int, w)
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError("server.port", "must be between 0 and 65535")
    nice = _get(data, "publisher_nice", int, w)
    if nice is not None and not 0 <= nice <= 19:
        raise ConfigError("server.publisher_nice", "must be between 0 and 19")
    pause = _get(data, "publisher_pause_above", (int, float), w)
    if pause is not None and not 0 <= pause <= 1:
        raise ConfigError("server.publisher_pause_above",
                          "must be between 0 (never pause) and 1 (a whole core)")
    return ServerConfig(
        host=_get(data, "host", str, w) or d.host,
        port=d.port if port is None else port,
        trusted_proxies=_networks(data.get("trusted_proxies"), "server.trusted_proxies"),
        max_body_bytes=_positive(_get(data, "max_body_bytes", int, w), "server.max_body_bytes",
                                 d.max_body_bytes),
        shutdown_timeout=_positive(_get(data, "shutdown_timeout", (int, float), w),
                                   "server.shutdown_timeout", d.shutdown_timeout),
        publisher_nice=_or(nice, d.publisher_nice),
        publisher_idle=_or(_get(data, "publisher_idle", bool, w), d.publisher_idle),
        publisher_pause_above=float(_or(pause, d.publisher_pause_above)),
        publisher_pause_max_seconds=float(_positive(
            _get(data, "publisher_pause_max_seconds", (int, float), w),
            "server.publisher_pause_max_seconds", d.publisher_pause_max_seconds)),
    )


def _spool(data: Mapping[str, Any], base: Path) -> SpoolConfig:
    w = "spool"
    _unknown_keys(data, {"dir", "max_bytes", "retention_hours", "dedup_window_hours",
                         "prune_interval_seconds"}, w)
    d = SpoolConfig()
    directory = _get(data, "dir", str, w)
    path = Path(directory) if directory else d.dir
    return SpoolConfig(
        dir=path if path.is_absolute() else base / path,
        max_bytes=_positive(_get(data, "max_bytes", int, w), "spool.max_bytes", d.max_bytes),
        retention_hours=_positive(_get(data, "retention_hours", (int, float), w),
                                  "spool.retention_hours", d.retention_hours),
        dedup_window_hours=_positive(_get(data, "dedup_window_hours", (int, float), w),
                                     "spool.dedup_window_hours", d.dedup_window_hours),
        prune_interval_seconds=_positive(_get(data, "prune_interval_seconds", (int, float), w),
                                         "spool.prune_interval_seconds",
                                         d.prune_interval_seconds),
    )


_COMPRESSION = {"none", "gzip", "snappy", "lz4", "zstd"}
_SECURITY = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
_SASL = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def _kafka(data: Mapping[str, Any], environ: Mapping[str, str]) -> KafkaConfig:
    w = "kafka"
    _unknown_keys(data, {"bootstrap_servers", "topic_prefix", "client_id", "create_topics",
                         "partitions", "replication_factor", "compression", "linger_ms",
                         "batch_linger_ms", "request_timeout_ms", "security_protocol",
                         "sasl_mechanism", "sasl_username", "sasl_password", "ssl_cafile",
                         "ssl_certfile", "ssl_keyfile"}, w)
    d = KafkaConfig()
    servers = data.get("bootstrap_servers", [])
    override = environ.get("RELAY_KAFKA_BOOTSTRAP_SERVERS")
    if override:
        servers = override
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ConfigError("kafka.bootstrap_servers", "must be a list of host:port strings")
    for i, server in enumerate(servers):
        if ":" not in server:
            raise ConfigError(f"kafka.bootstrap_servers[{i}]", f"{server!r} is not host:port")
    compression = _get(data, "compression", str, w) or d.compression
    if compression not in _COMPRESSION:
        raise ConfigError("kafka.compression", f"must be one of {sorted(_COMPRESSION)}")
    protocol = (_get(data, "security_protocol", str, w) or d.security_protocol).upper()
    if protocol not in _SECURITY:
        raise ConfigError("kafka.security_protocol", f"must be one of {sorted(_SECURITY)}")
    mechanism = _get(data, "sasl_mechanism", str, w)
    if mechanism is not None and mechanism.upper() not in _SASL:
        raise ConfigError("kafka.sasl_mechanism", f"must be one of {sorted(_SASL)}")
    password = data.get("sasl_password")
    username = _get(data, "sasl_username", str, w)
    if protocol.startswith("SASL") and (mechanism is None or password is None or not username):
        raise ConfigError("kafka.sasl_mechanism", f"{protocol} needs sasl_mechanism, "
                          "sasl_username and sasl_password")
    prefix = _get(data, "topic_prefix", str, w)
    return KafkaConfig(
        bootstrap_servers=tuple(servers),
        topic_prefix=d.topic_prefix if prefix is None else prefix,
        client_id=_get(data, "client_id", str, w) or d.client_id,
        create_topics=bool(_get(data, "create_topics", bool, w)),
        partitions=_positive(_get(data, "partitions", int, w), "kafka.partitions",
                             d.partitions),
        replication_factor=_positive(_get(data, "replication_factor", int, w),
                                     "kafka.replication_factor", d.replication_factor),
        compression=compression,
        linger_ms=_linger(_get(data, "linger_ms", int, w), "kafka.linger_ms", d.linger_ms),
        batch_linger_ms=_linger(_get(data, "batch_linger_ms", int, w), "kafka.batch_linger_ms",
                                d.batch_linger_ms),
        request_timeout_ms=_positive(_get(data, "request_timeout_ms", int, w),
                                     "kafka.request_timeout_ms", d.request_timeout_ms),
        security_protocol=protocol,
        sasl_mechanism=mechanism.upper() if mechanism else None,
        sasl_username=username,
        sasl_password=(resolve_secret(password, "kafka.sasl_password", environ)
                       if password is not None else None),
        ssl_cafile=_get(data, "ssl_cafile", str, w),
        ssl_certfile=_get(data, "ssl_certfile", str, w),
        ssl_keyfile=_get(data, "ssl_keyfile", str, w),
    )


def _log(data: Mapping[str, Any]) -> LogConfig:
    _unknown_keys(data, {"level", "format"}, "log")
    level = (_get(data, "level", str, "log") or "info").lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("log.level", "must be debug, info, warning or error")
    fmt = _get(data, "format", str, "log") or "json"
    if fmt not in {"json", "console"}:
        raise ConfigError("log.format", "must be 'json' or 'console'")
    return LogConfig(level=level, format=fmt)


_SOURCE_KEYS = {"name", "provider", "allow_ips", "basic_auth", "token", "tokens",
                "default_region", "max_body_bytes", "keywords"}


def _source(data: object, index: int, environ: Mapping[str, str]) -> SourceConfig:
    w = f"sources[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(w, "must be a table")
    name = _get(data, "name", str, w)
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{w}.name", "is required: letters, digits, '-' and '_' only")
    provider = _get(data, "provider", str, w)
    if not provider:
        raise ConfigError(f"{w}.provider", "is required")
    basic = data.get("basic_auth")
    auth = None
    if basic is not None:
        if not isinstance(basic, dict) or set(basic) != {"username", "password"}:
            raise ConfigError(f"{w}.basic_auth", "must be { username = ..., password = 'env:...' }")
        if not isinstance(basic["username"], str) or not basic["username"]:
            raise ConfigError(f"{w}.basic_auth.username", "must be a non-empty string")
        auth = BasicAuth(basic["username"],
                         resolve_secret(basic["password"], f"{w}.basic_auth.password", environ))
    token_refs = data.get("tokens", [])
    if not isinstance(token_refs, list):
        raise ConfigError(f"{w}.tokens", "must be a list of 'env:'/'file:' references")
    if "token" in data:
        token_refs = [data["token"], *token_refs]
    tokens = tuple(resolve_secret(t, f"{w}.tokens[{i}]", environ) for i, t in enumerate(token_refs))
    region = _get(data, "default_region", str, w)
    if region is not None and (len(region) != 2 or not region.isalpha()):
        raise ConfigError(f"{w}.default_region", "must be a two-letter region code such as 'US'")
    kw = _table(data, "keywords", w)
    _unknown_keys(kw, {"opt_out", "opt_in", "help"}, f"{w}.keywords")
    keywords = Keywords(
        opt_out=_words(kw.get("opt_out"), f"{w}.keywords.opt_out", DEFAULT_OPT_OUT),
        opt_in=_words(kw.get("opt_in"), f"{w}.keywords.opt_in", DEFAULT_OPT_IN),
        help=_words(kw.get("help"), f"{w}.keywords.help", DEFAULT_HELP),
    )
    return SourceConfig(
        name=name,
        provider=provider,
        allow_ips=_networks(data.get("allow_ips"), f"{w}.allow_ips"),
        basic_auth=auth,
        tokens=tokens,
        default_region=region.upper() if region else None,
        max_body_bytes=_positive(_get(data, "max_body_bytes", int, w), f"{w}.max_body_bytes",
                                 None),
        keywords=keywords,
        options={k: v for k, v in data.items() if k not in _SOURCE_KEYS},
        index=index,
        environ=dict(environ),
    )


def parse(data: Mapping[str, Any], *, base: Path | None = None,
          environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """Validate a parsed TOML document into :class:`Settings`."""
    env = os.environ if environ is None else environ
    _unknown_keys(data, {"server", "spool", "kafka", "log", "sources"}, "")
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list):
        raise ConfigError("sources", "must be an array of tables ([[sources]])")
    sources = tuple(_source(s, i, env) for i, s in enumerate(raw_sources))
    seen: set[str] = set()
    for src in sources:
        if src.name in seen:
            raise ConfigError(f"{src.key}.name", f"source {src.name!r} is defined twice")
        seen.add(src.name)
    return Settings(
        server=_server(_table(data, "server", "")),
        spool=_spool(_table(data, "spool", ""), base or Path.cwd()),
        kafka=_kafka(_table(data, "kafka", ""), env),
        log=_log(_table(data, "log", "")),
        sources=sources,
        path=path,
    )


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at ``path``; relative spool dirs are taken from cwd."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{file} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{file} is not valid TOML: {exc}") from None
    return parse(data, environ=environ, path=file)
