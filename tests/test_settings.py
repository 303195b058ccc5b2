"""Unit tests for relay.settings: TOML parsing, validation, secrets and overrides."""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import INT64, json_documents

from relay.errors import ConfigError
from relay.settings import (
    DEFAULT_HELP,
    DEFAULT_OPT_IN,
    DEFAULT_OPT_OUT,
    KafkaConfig,
    LogConfig,
    Secret,
    ServerConfig,
    SpoolConfig,
    load,
    parse,
    resolve_secret,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "relay.example.toml"

ENV = {"PW": "s3cret-pw", "TOK1": "token-one", "TOK2": "token-two", "KPW": "kafka-pw"}


def src(**extra: Any) -> dict[str, Any]:
    """A minimal valid source table, with overrides."""
    return {"name": "bw", "provider": "bandwidth", **extra}


def config_error(data: dict[str, Any], environ: dict[str, str] | None = None) -> ConfigError:
    """Parse ``data`` expecting a ConfigError, and return it."""
    with pytest.raises(ConfigError) as info:
        parse(data, environ=ENV if environ is None else environ, base=Path("/base"))
    return info.value


# --- defaults and the example file ------------------------------------------------------------


def test_empty_document_gives_defaults() -> None:
    """An empty document yields every table's defaults and no sources."""
    s = parse({}, environ={}, base=Path("/base"))
    assert s.server == ServerConfig()
    assert s.kafka == KafkaConfig()
    assert s.log == LogConfig()
    assert s.sources == ()
    assert s.spool.dir == Path("/base/var/spool")
    assert s.spool.max_bytes == SpoolConfig().max_bytes
    assert s.kafka.configured is False
    assert s.path is None


def example_env() -> dict[str, str]:
    """A value for every ``env:NAME`` the example file references (usable as any secret)."""
    names = re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", EXAMPLE.read_text(encoding="utf-8"))
    value = "whsec_" + base64.b64encode(b"k" * 32).decode()
    return dict.fromkeys(names, value)


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/relay.example.toml loads once its secret variables are set."""
    monkeypatch.chdir(REPO)
    env = example_env()
    s = load(EXAMPLE, environ=env)
    assert s.path == EXAMPLE
    assert s.spool.dir.is_absolute()
    bw = s.source("bandwidth")
    assert bw is not None
    assert bw.basic_auth is not None
    assert bw.basic_auth.password.reveal() == env["BW_CALLBACK_PASSWORD"]
    assert s.source("nope") is None


def test_example_config_without_password_variable_names_the_key() -> None:
    """Without its environment variable the example config fails naming the password key."""
    env = example_env()
    del env["BW_CALLBACK_PASSWORD"]
    with pytest.raises(ConfigError) as info:
        load(EXAMPLE, environ=env)
    assert re.fullmatch(r"sources\[\d+\]\.basic_auth\.password", info.value.key)
    assert "BW_CALLBACK_PASSWORD" in info.value.problem


# --- secrets ----------------------------------------------------------------------------------


def test_secret_repr_and_str_hide_the_value() -> None:
    """A Secret prints its reference, never its value."""
    secret = Secret("hunter2", "env:PW")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "hunter2" not in repr([secret])
    assert repr(secret) == "Secret('env:PW')"
    assert secret.reveal() == "hunter2"
    assert secret.ref == "env:PW"


def test_secret_inside_settings_repr_is_hidden() -> None:
    """The repr of parsed settings never contains a resolved secret."""
    s = parse({"sources": [src(basic_auth={"username": "u", "password": "env:PW"},
                                tokens=["env:TOK1"])]},
              environ=ENV, base=Path("/b"))  # fmt: skip
    text = repr(s)
    assert "s3cret-pw" not in text
    assert "token-one" not in text
    assert "env:PW" in text


def test_resolve_env_secret() -> None:
    """'env:NAME' resolves to the variable's value and keeps the reference."""
    secret = resolve_secret("env:PW", "k", ENV)
    assert secret.reveal() == "s3cret-pw"
    assert secret.ref == "env:PW"


def test_resolve_file_secret_strips_trailing_newline(tmp_path: Path) -> None:
    """'file:PATH' reads the file and strips the trailing newline only."""
    path = tmp_path / "secret"
    path.write_text("  abc def \r\n", encoding="utf-8")
    secret = resolve_secret(f"file:{path}", "k", {})
    assert secret.reveal() == "  abc def "
    assert secret.ref == f"file:{path}"


def test_resolve_missing_file_secret_names_key(tmp_path: Path) -> None:
    """A 'file:' secret that cannot be read is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        resolve_secret(f"file:{tmp_path / 'missing'}", "kafka.sasl_password", {})
    assert info.value.key == "kafka.sasl_password"
    assert "cannot read" in info.value.problem


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("hunter2", "inline"),
        ("env:", "variable name"),
        ("env:NOPE", "NOPE is not set"),
        ("env:EMPTY", "empty"),
        (42, "must be a string"),
        (None, "must be a string"),
        (["env:PW"], "must be a string"),
    ],
)
def test_resolve_secret_refusals(value: object, needle: str) -> None:
    """Inline, unnamed, unset, empty and non-string secrets are refused naming the key."""
    with pytest.raises(ConfigError) as info:
        resolve_secret(value, "sources[3].tokens[0]", {"EMPTY": ""})
    assert info.value.key == "sources[3].tokens[0]"
    assert needle in info.value.problem


def test_inline_secret_error_does_not_echo_the_secret() -> None:
    """Refusing an inline secret does not repeat the secret in the error."""
    err = config_error({"sources": [src(basic_auth={"username": "u",
                                                    "password": "PlainTextPw"})]})  # fmt: skip
    assert err.key == "sources[0].basic_auth.password"
    assert "PlainTextPw" not in str(err)


def test_empty_file_secret_is_refused(tmp_path: Path) -> None:
    """A 'file:' secret holding only a newline is refused as empty."""
    path = tmp_path / "empty"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty"):
        resolve_secret(f"file:{path}", "k", {})


# --- server -----------------------------------------------------------------------------------


def test_server_values_parsed() -> None:
    """Every [server] key is read with its type."""
    s = parse({"server": {"host": "0.0.0.0", "port": 0, "trusted_proxies": ["10.0.0.0/8", "::1"],
                          "max_body_bytes": 10, "shutdown_timeout": 2.5,
                          "publisher_nice": 0, "publisher_idle": False,
                          "publisher_pause_above": 0.25, "publisher_pause_max_seconds": 5}},
              environ={}, base=Path("/b"))  # fmt: skip
    assert s.server.host == "0.0.0.0"
    assert s.server.port == 0
    assert s.server.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("::1/128"))  # fmt: skip
    assert s.server.max_body_bytes == 10
    assert s.server.shutdown_timeout == 2.5
    assert s.server.publisher_nice == 0
    assert s.server.publisher_idle is False
    assert s.server.publisher_pause_above == 0.25
    assert s.server.publisher_pause_max_seconds == 5.0
    assert parse({}, environ={}, base=Path("/b")).server.publisher_pause_max_seconds == 30.0
    assert parse({}, environ={}, base=Path("/b")).server.publisher_pause_above == 0.6
    assert parse({"server": {"publisher_pause_above": 0}}, environ={},
                 base=Path("/b")).server.publisher_pause_above == 0.0
    assert parse({}, environ={}, base=Path("/b")).server.publisher_nice == 10
    assert parse({}, environ={}, base=Path("/b")).server.publisher_idle is True


def test_trusted_proxy_host_bits_are_accepted() -> None:
    """A CIDR with host bits set is accepted and widened to its network."""
    s = parse({"server": {"trusted_proxies": ["10.1.2.3/8"]}}, environ={}, base=Path("/b"))
    assert s.server.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"port": "8080"}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"port": 80.0}}, "server.port"),
        ({"server": {"host": 1}}, "server.host"),
        ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes"),
        ({"server": {"shutdown_timeout": -1}}, "server.shutdown_timeout"),
        ({"server": {"shutdown_timeout": "10"}}, "server.shutdown_timeout"),
        ({"server": {"publisher_nice": 20}}, "server.publisher_nice"),
        ({"server": {"publisher_nice": -5}}, "server.publisher_nice"),
        ({"server": {"publisher_nice": 1.5}}, "server.publisher_nice"),
        ({"server": {"publisher_idle": "yes"}}, "server.publisher_idle"),
        ({"server": {"publisher_idle": 1}}, "server.publisher_idle"),
        ({"server": {"publisher_pause_above": 1.5}}, "server.publisher_pause_above"),
        ({"server": {"publisher_pause_above": -0.1}}, "server.publisher_pause_above"),
        ({"server": {"publisher_pause_above": "0.6"}}, "server.publisher_pause_above"),
        ({"server": {"publisher_pause_above": True}}, "server.publisher_pause_above"),
        ({"server": {"publisher_pause_max_seconds": 0}}, "server.publisher_pause_max_seconds"),
        ({"server": {"publisher_pause_max_seconds": "30"}},
         "server.publisher_pause_max_seconds"),
        ({"server": {"trusted_proxies": "10.0.0.0/8"}}, "server.trusted_proxies"),
        ({"server": {"trusted_proxies": ["10.0.0.0/8", "nope"]}}, "server.trusted_proxies[1]"),
        ({"server": {"bogus": 1}}, "server.bogus"),
        ({"server": []}, "server"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_server_and_top_level_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    """Bad [server] values and unknown keys are ConfigErrors naming the exact key."""
    assert config_error(data).key == key


def test_type_error_says_expected_and_actual_type() -> None:
    """A wrongly typed value's problem names the expected and the given type."""
    err = config_error({"server": {"port": "8080"}})
    assert "int" in err.problem
    assert "str" in err.problem


# --- spool ------------------------------------------------------------------------------------


def test_spool_relative_dir_is_under_base_and_absolute_dir_kept(tmp_path: Path) -> None:
    """A relative spool dir is taken from ``base``; an absolute one is kept as is."""
    rel = parse({"spool": {"dir": "data/spool"}}, environ={}, base=tmp_path)
    assert rel.spool.dir == tmp_path / "data" / "spool"
    absolute = parse({"spool": {"dir": "/srv/spool"}}, environ={}, base=tmp_path)
    assert absolute.spool.dir == Path("/srv/spool")


def test_spool_default_base_is_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``base`` a relative spool dir is taken from the working directory."""
    monkeypatch.chdir(tmp_path)
    assert parse({}, environ={}).spool.dir == tmp_path / "var" / "spool"


def test_spool_values_parsed() -> None:
    """Every [spool] number is read, ints accepted for float keys."""
    s = parse({"spool": {"max_bytes": 1000, "retention_hours": 1, "dedup_window_hours": 0.5,
                         "prune_interval_seconds": 60}}, environ={}, base=Path("/b"))  # fmt: skip
    assert (s.spool.max_bytes, s.spool.retention_hours, s.spool.dedup_window_hours,
            s.spool.prune_interval_seconds) == (1000, 1, 0.5, 60)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"spool": {"max_bytes": 0}}, "spool.max_bytes"),
        ({"spool": {"max_bytes": 1.5}}, "spool.max_bytes"),
        ({"spool": {"retention_hours": 0}}, "spool.retention_hours"),
        ({"spool": {"dedup_window_hours": -2}}, "spool.dedup_window_hours"),
        ({"spool": {"prune_interval_seconds": 0}}, "spool.prune_interval_seconds"),
        ({"spool": {"dir": 5}}, "spool.dir"),
        ({"spool": {"size": 5}}, "spool.size"),
    ],
)
def test_spool_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    """Bad [spool] values are ConfigErrors naming the key."""
    assert config_error(data).key == key


def test_nan_shutdown_timeout_is_refused() -> None:
    """A NaN number (TOML allows ``nan``) is refused like any non-positive value."""
    assert config_error({"server": {"shutdown_timeout": math.nan}}).key == "server.shutdown_timeout"


# --- kafka ------------------------------------------------------------------------------------


def test_kafka_bootstrap_servers_as_list_or_comma_string() -> None:
    """bootstrap_servers is a list or a comma-separated string of host:port."""
    a = parse({"kafka": {"bootstrap_servers": ["k1:9092", "k2:9092"]}}, environ={},
              base=Path("/b"))  # fmt: skip
    b = parse({"kafka": {"bootstrap_servers": " k1:9092, ,k2:9092 "}}, environ={}, base=Path("/b"))
    assert a.kafka.bootstrap_servers == b.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert a.kafka.configured is True


def test_kafka_env_override_replaces_file_servers() -> None:
    """RELAY_KAFKA_BOOTSTRAP_SERVERS replaces the file's bootstrap servers."""
    env = {"RELAY_KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2"}
    s = parse({"kafka": {"bootstrap_servers": ["k1:9092"]}}, environ=env, base=Path("/b"))
    assert s.kafka.bootstrap_servers == ("a:1", "b:2")
    s = parse({}, environ=env, base=Path("/b"))
    assert s.kafka.bootstrap_servers == ("a:1", "b:2")


def test_kafka_empty_env_override_is_ignored() -> None:
    """An empty RELAY_KAFKA_BOOTSTRAP_SERVERS leaves the file's servers in place."""
    s = parse({"kafka": {"bootstrap_servers": ["k1:9092"]}},
              environ={"RELAY_KAFKA_BOOTSTRAP_SERVERS": ""}, base=Path("/b"))  # fmt: skip
    assert s.kafka.bootstrap_servers == ("k1:9092",)


def test_kafka_values_parsed_and_normalised() -> None:
    """Kafka options are read; protocol and mechanism are upper-cased; secrets resolved."""
    s = parse({"kafka": {
        "bootstrap_servers": ["k:1"], "topic_prefix": "", "client_id": "me",
        "create_topics": True, "partitions": 3, "replication_factor": 2, "compression": "lz4",
        "linger_ms": 20, "batch_linger_ms": 25, "request_timeout_ms": 1000,
        "security_protocol": "sasl_ssl",
        "sasl_mechanism": "scram-sha-512", "sasl_username": "user", "sasl_password": "env:KPW",
        "ssl_cafile": "/ca.pem",
    }}, environ=ENV, base=Path("/b"))  # fmt: skip
    k = s.kafka
    assert k.topic_prefix == ""
    assert k.client_id == "me"
    assert k.create_topics is True
    assert (k.partitions, k.replication_factor, k.compression) == (3, 2, "lz4")
    assert (k.linger_ms, k.batch_linger_ms, k.request_timeout_ms) == (20, 25, 1000)
    assert k.security_protocol == "SASL_SSL"
    assert k.sasl_mechanism == "SCRAM-SHA-512"
    assert k.sasl_username == "user"
    assert k.sasl_password is not None
    assert k.sasl_password.reveal() == "kafka-pw"
    assert k.ssl_cafile == "/ca.pem"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bootstrap_servers": ["k1:9092", "k2"]}, "kafka.bootstrap_servers[1]"),
        ({"bootstrap_servers": 9092}, "kafka.bootstrap_servers"),
        ({"bootstrap_servers": [9092]}, "kafka.bootstrap_servers"),
        ({"compression": "brotli"}, "kafka.compression"),
        ({"security_protocol": "TLS"}, "kafka.security_protocol"),
        ({"sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism"),
        ({"security_protocol": "SASL_SSL"}, "kafka.sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
         "kafka.sasl_mechanism"),
        ({"sasl_password": "plain-inline"}, "kafka.sasl_password"),
        ({"partitions": 0}, "kafka.partitions"),
        ({"replication_factor": -1}, "kafka.replication_factor"),
        ({"request_timeout_ms": 0}, "kafka.request_timeout_ms"),
        ({"linger_ms": -1}, "kafka.linger_ms"),
        ({"batch_linger_ms": -5}, "kafka.batch_linger_ms"),
        ({"batch_linger_ms": "10ms"}, "kafka.batch_linger_ms"),
        ({"create_topics": "yes"}, "kafka.create_topics"),
        ({"brokers": []}, "kafka.brokers"),
    ],
)
def test_kafka_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    """Bad [kafka] values are ConfigErrors naming the key."""
    assert config_error({"kafka": data}).key == key


def test_kafka_linger_ms_zero_is_kept() -> None:
    """linger_ms = 0 and batch_linger_ms = 0 are kept, not replaced by the defaults."""
    s = parse({"kafka": {"linger_ms": 0, "batch_linger_ms": 0}}, environ={}, base=Path("/b"))
    assert (s.kafka.linger_ms, s.kafka.batch_linger_ms) == (0, 0)


def test_kafka_batching_defaults() -> None:
    """By default the publisher batches for 10 ms and the producer sends each batch at once."""
    s = parse({}, environ={}, base=Path("/b"))
    assert (s.kafka.batch_linger_ms, s.kafka.linger_ms) == (10, 0)


def test_kafka_sasl_without_username_is_refused() -> None:
    """A SASL protocol without sasl_username is refused, as its error message promises."""
    data = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
            "sasl_password": "env:KPW"}  # fmt: skip
    assert config_error({"kafka": data}).key.startswith("kafka.sasl")


# --- log --------------------------------------------------------------------------------------


def test_log_level_is_case_insensitive() -> None:
    """log.level is lower-cased and log.format kept."""
    s = parse({"log": {"level": "WARNING", "format": "console"}}, environ={}, base=Path("/b"))
    assert s.log == LogConfig(level="warning", format="console")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"level": "trace"}, "log.level"),
        ({"format": "xml"}, "log.format"),
        ({"level": 10}, "log.level"),
        ({"colour": True}, "log.colour"),
    ],
)
def test_log_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    """Bad [log] values are ConfigErrors naming the key."""
    assert config_error({"log": data}).key == key


# --- sources ----------------------------------------------------------------------------------


def test_source_full_parse() -> None:
    """Every source key is read; unknown keys become provider options."""
    s = parse({"sources": [src(
        allow_ips=["203.0.113.0/24", "2001:db8::/32"],
        basic_auth={"username": "relay", "password": "env:PW"},
        token="env:TOK1", tokens=["env:TOK2"], default_region="gb", max_body_bytes=2048,
        keywords={"opt_out": [" stop ", "Fin"]}, signing_key="env:X", mapping={"a": 1},
    )]}, environ=ENV, base=Path("/b"))  # fmt: skip
    (cfg,) = s.sources
    assert cfg.name == "bw"
    assert cfg.provider == "bandwidth"
    assert cfg.allow_ips == (ipaddress.ip_network("203.0.113.0/24"),
                             ipaddress.ip_network("2001:db8::/32"))  # fmt: skip
    assert cfg.basic_auth is not None
    assert cfg.basic_auth.password.reveal() == "s3cret-pw"
    assert [t.reveal() for t in cfg.tokens] == ["token-one", "token-two"]
    assert cfg.default_region == "GB"
    assert cfg.max_body_bytes == 2048
    assert cfg.keywords.opt_out == frozenset({"STOP", "FIN"})
    assert cfg.keywords.opt_in == frozenset(DEFAULT_OPT_IN)
    assert cfg.keywords.help == frozenset(DEFAULT_HELP)
    assert dict(cfg.options) == {"signing_key": "env:X", "mapping": {"a": 1}}
    assert cfg.index == 0
    assert cfg.key == "sources[0]"


def test_source_defaults() -> None:
    """A source with only name and provider has no auth, no limits and default keywords."""
    (cfg,) = parse({"sources": [src()]}, environ={}, base=Path("/b")).sources
    assert cfg.basic_auth is None
    assert cfg.tokens == ()
    assert cfg.allow_ips == ()
    assert cfg.default_region is None
    assert cfg.max_body_bytes is None
    assert cfg.keywords.opt_out == frozenset(DEFAULT_OPT_OUT)
    assert "ARRÊT" in cfg.keywords.opt_out
    assert dict(cfg.options) == {}


def test_source_indexes_follow_file_order() -> None:
    """Each source knows its position; lookup by name finds the right one."""
    s = parse({"sources": [src(name="a"), src(name="b-2"), src(name="c_3")]}, environ={},
              base=Path("/b"))  # fmt: skip
    assert [c.index for c in s.sources] == [0, 1, 2]
    found = s.source("c_3")
    assert found is not None
    assert found.key == "sources[2]"


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"provider": "bandwidth"}, "sources[0].name"),
        (src(name=""), "sources[0].name"),
        (src(name="a/b"), "sources[0].name"),
        (src(name="has space"), "sources[0].name"),
        (src(name="--"), "sources[0].name"),
        (src(name=3), "sources[0].name"),
        ({"name": "x"}, "sources[0].provider"),
        (src(provider=""), "sources[0].provider"),
        (src(basic_auth="env:PW"), "sources[0].basic_auth"),
        (src(basic_auth={"username": "u"}), "sources[0].basic_auth"),
        (src(basic_auth={"username": "u", "password": "env:PW", "realm": "r"}),
         "sources[0].basic_auth"),
        (src(basic_auth={"username": "", "password": "env:PW"}), "sources[0].basic_auth.username"),
        (src(basic_auth={"username": 1, "password": "env:PW"}), "sources[0].basic_auth.username"),
        (src(basic_auth={"username": "u", "password": "pw"}), "sources[0].basic_auth.password"),
        (src(tokens="env:TOK1"), "sources[0].tokens"),
        (src(tokens=["env:TOK1", "inline"]), "sources[0].tokens[1]"),
        (src(token="inline"), "sources[0].tokens[0]"),
        (src(token="env:TOK1", tokens=["env:MISSING"]), "sources[0].tokens[1]"),
        (src(default_region="USA"), "sources[0].default_region"),
        (src(default_region="1A"), "sources[0].default_region"),
        (src(allow_ips=["10.0.0.0/8", "10.0.0.0/99"]), "sources[0].allow_ips[1]"),
        (src(allow_ips="10.0.0.0/8"), "sources[0].allow_ips"),
        (src(max_body_bytes=0), "sources[0].max_body_bytes"),
        (src(keywords=[]), "sources[0].keywords"),
        (src(keywords={"stop": ["X"]}), "sources[0].keywords.stop"),
        (src(keywords={"opt_in": "YES"}), "sources[0].keywords.opt_in"),
        (src(keywords={"help": ["  "]}), "sources[0].keywords.help"),
    ],
)
def test_source_errors_name_the_key(source: dict[str, Any], key: str) -> None:
    """Bad source values are ConfigErrors naming the exact key."""
    assert config_error({"sources": [source]}).key == key


def test_error_in_second_source_names_its_index() -> None:
    """A problem in the second [[sources]] entry is reported at sources[1]."""
    err = config_error({"sources": [src(name="a"), src(name="b", default_region="XYZ")]})
    assert err.key == "sources[1].default_region"


def test_duplicate_source_names_are_refused() -> None:
    """Two sources with the same name are refused at the second one."""
    err = config_error({"sources": [src(name="a"), src(name="b"), src(name="a")]})
    assert err.key == "sources[2].name"
    assert "twice" in err.problem


@pytest.mark.parametrize("value", [{"name": "a"}, "a", 1])
def test_sources_must_be_an_array_of_tables(value: object) -> None:
    """``sources`` that is not an array is refused at 'sources'."""
    assert config_error({"sources": value}).key == "sources"


def test_source_entry_must_be_a_table() -> None:
    """An entry of ``sources`` that is not a table is refused at its index."""
    assert config_error({"sources": [src(), "x"]}).key == "sources[1]"


def test_token_with_non_list_tokens_is_config_error() -> None:
    """``token`` together with a non-list ``tokens`` is a ConfigError, not a crash."""
    assert config_error({"sources": [src(token="env:TOK1", tokens=5)]}).key == "sources[0].tokens"


# --- load -------------------------------------------------------------------------------------


def test_load_missing_file_is_config_error(tmp_path: Path) -> None:
    """A missing file is a ConfigError at key 'config' naming the file."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml", environ={})
    assert info.value.key == "config"
    assert "nope.toml" in info.value.problem


def test_load_invalid_toml_is_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError at key 'config'."""
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert info.value.key == "config"
    assert "not valid TOML" in info.value.problem


def test_load_reads_file_and_resolves_secret_files(tmp_path: Path) -> None:
    """load parses a real file, resolving a 'file:' secret and recording the path."""
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[server]\nport = 9000\n[spool]\ndir = "{tmp_path / "spool"}"\n'
        f'[[sources]]\nname = "s"\nprovider = "bandwidth"\n'
        f'basic_auth = {{ username = "u", password = "file:{secret}" }}\n',
        encoding="utf-8",
    )
    s = load(str(path), environ={})
    assert s.path == path
    assert s.server.port == 9000
    assert s.spool.dir == tmp_path / "spool"
    assert s.sources[0].basic_auth is not None
    assert s.sources[0].basic_auth.password.reveal() == "from-file"


def test_load_non_utf8_file_is_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError at key 'config', not a crash."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert info.value.key == "config"


def test_load_directory_is_config_error(tmp_path: Path) -> None:
    """A path that is a directory is a ConfigError at key 'config', not a crash."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ={})
    assert info.value.key == "config"


# --- property: anything TOML can hold fails only with ConfigError -----------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), INT64,
    st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["env:PW", "env:NOPE", "file:/nonexistent", "127.0.0.1/8", "k:9092",
                     "SASL_SSL", "PLAIN", "US", "zstd", "debug", "json"]),
)  # fmt: skip
_values = json_documents(_scalars, st.text(max_size=8), max_size=4, max_leaves=12)
_SOURCE_KEYS = ["name", "provider", "allow_ips", "basic_auth", "tokens", "default_region",
                "max_body_bytes", "keywords", "username", "password", "opt_out"]  # fmt: skip
_TABLE_KEYS = {
    "server": ["host", "port", "trusted_proxies", "max_body_bytes", "shutdown_timeout"],
    "spool": ["dir", "max_bytes", "retention_hours", "dedup_window_hours",
              "prune_interval_seconds"],
    "kafka": ["bootstrap_servers", "topic_prefix", "client_id", "create_topics", "partitions",
              "compression", "linger_ms", "batch_linger_ms", "security_protocol",
              "sasl_mechanism",
              "sasl_username", "sasl_password"],
    "log": ["level", "format"],
}  # fmt: skip


def _table_strategy(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), _values, max_size=len(keys))


_documents = st.fixed_dictionaries(
    {},
    optional={
        **{name: _table_strategy(keys) | _values for name, keys in _TABLE_KEYS.items()},
        # 'token' is left out: with a non-list 'tokens' it hits the xfail'd TypeError above
        "sources": st.lists(_table_strategy(_SOURCE_KEYS) | _values, max_size=3) | _values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_parse_raises_only_config_error(data: dict[str, Any]) -> None:
    """Whatever a TOML document holds, parse either succeeds or raises ConfigError."""
    try:
        parse(data, environ=ENV, base=Path("/b"))
    except ConfigError as exc:
        assert exc.key
        assert exc.problem
