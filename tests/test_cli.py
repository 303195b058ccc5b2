"""Unit tests for the ``relay`` command: check-config and dead-letters."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from relay.cli import main
from relay.schema import RawPostback
from relay.spool import DEAD, PUBLISHED, Outcome, Spool

REPO = Path(__file__).resolve().parent.parent

SOURCE = """
[[sources]]
name = "bw"
provider = "bandwidth"
basic_auth = { username = "relay", password = "env:RELAY_TEST_BW_PASSWORD" }
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no configuration from the developer's environment."""
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    monkeypatch.delenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("RELAY_TEST_BW_PASSWORD", "pw")


def write_config(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    """Write a config file under tmp_path, with the spool inside tmp_path."""
    path = tmp_path / name
    path.write_text(f'[spool]\ndir = "{tmp_path / "spool"}"\n' + text, encoding="utf-8")
    return path


def raw(source: str, received_at: float, body: bytes) -> RawPostback:
    """A raw postback without headers (its size is len(body) + 2 for "[]")."""
    return RawPostback(source=source, received_at=received_at, remote_addr="1.2.3.4",
                       method="POST", path=f"/hooks/{source}", query="", headers=(),
                       body=body)  # fmt: skip


# --- check-config -----------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file prints 'ok' with its sources and Kafka status, and exits 0."""
    path = write_config(tmp_path, SOURCE)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok (1 sources: bw; kafka: not configured)"
    assert err == ""


def test_check_config_example_file(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The shipped example configuration passes check-config once its secrets are set."""
    path = REPO / "deploy" / "relay.example.toml"
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    for name in re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")):
        monkeypatch.setenv(name, secret)
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok (" in out
    assert "bandwidth" in out


def test_check_config_reports_kafka_override(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """check-config shows the bootstrap servers, including the environment override."""
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    path = write_config(tmp_path, '[kafka]\nbootstrap_servers = ["file:9092"]\n')
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith(
        "ok (0 sources: none; kafka: k1:9092, k2:9092)")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 99999\n", "server.port"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[[sources]]\nname = "bw"\nprovider = "bandwidth"\n'
         'basic_auth = { username = "u", password = "inline-pw" }\n',
         "sources[0].basic_auth.password"),
        ('[[sources]]\nname = "x"\nprovider = "no-such-provider"\ntoken = "env:RELAY_TEST_BW_PASSWORD"\n',
         "sources[0].provider"),
        ('[[sources]]\nname = "bw"\nprovider = "bandwidth"\n', "sources[0]"),
        ("[server\n", "config"),
    ],
)
def test_check_config_bad_file_exits_2_naming_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  text: str, key: str) -> None:  # fmt: skip
    """An invalid file exits 2 with the offending key named on stderr and nothing on stdout."""
    path = write_config(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("relay: configuration error: ")
    assert f" {key}: " in err


def test_check_config_bad_file_does_not_print_secret(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Refusing an inline password does not echo the password."""
    path = write_config(tmp_path, '[[sources]]\nname = "bw"\nprovider = "bandwidth"\n'
                                  'basic_auth = { username = "u", password = "Tr0ub4dor" }\n')  # fmt: skip
    assert main(["check-config", str(path)]) == 2
    assert "Tr0ub4dor" not in capsys.readouterr().err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file exits 2 naming the file."""
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert "config: " in err
    assert "absent.toml" in err


def test_check_config_non_utf8_file_exits_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A file that is not UTF-8 exits 2 with a configuration error instead of a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    assert main(["check-config", str(path)]) == 2
    assert "config: " in capsys.readouterr().err


# --- dead-letters -----------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[int]]:
    """A config whose spool holds three dead letters and one published row."""
    path = write_config(tmp_path, SOURCE)
    with Spool(tmp_path / "spool", 1 << 30) as s:
        a = s.append_sync(raw("bw", 1_740_823_205.0, b"x" * 10))
        b = s.append_sync(raw("sky", 1_740_823_265.5, b"y" * 20))
        c = s.append_sync(raw("bw", 1_740_823_325.0, b"z" * 30))
        d = s.append_sync(raw("bw", 1_740_823_385.0, b"ok"))
        s.complete_sync([Outcome(a, DEAD, error="unreadable JSON"),
                         Outcome(b, DEAD, error="missing field 'to'"),
                         Outcome(c, DEAD), Outcome(d, PUBLISHED, ("e",))])  # fmt: skip
    return path, [a, b, c]


def test_dead_letters_table(filled: tuple[Path, list[int]],
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """dead-letters prints one line per dead row, newest first, then a count."""
    path, (a, b, c) = filled
    assert main(["dead-letters", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RAW_ID", "SOURCE", "RECEIVED_AT", "SIZE", "ERROR"]
    assert [int(line.split()[0]) for line in lines[1:4]] == [c, b, a]
    assert lines[2].split(maxsplit=4) == [str(b), "sky", "2025-03-01T10:01:05Z", "22",
                                          "missing field 'to'"]  # fmt: skip
    assert lines[3].split(maxsplit=4) == [str(a), "bw", "2025-03-01T10:00:05Z", "12",
                                          "unreadable JSON"]  # fmt: skip
    assert lines[-1] == "3 dead letter(s)"
    assert len(lines) == 5


def test_dead_letters_json(filled: tuple[Path, list[int]],
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """dead-letters --json prints one JSON object per dead row."""
    path, (a, b, c) = filled
    assert main(["dead-letters", "--config", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["raw_id"] for r in rows] == [c, b, a]
    assert rows[1] == {"raw_id": b, "source": "sky", "received_at": 1_740_823_265.5,
                       "error": "missing field 'to'", "size": 22}  # fmt: skip


def test_dead_letters_limit(filled: tuple[Path, list[int]],
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--limit caps the number of rows listed, newest kept."""
    path, (_, b, c) = filled
    assert main(["dead-letters", "--config", str(path), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines[1:-1]] == [c, b]
    assert lines[-1] == "2 dead letter(s)"


def test_dead_letters_from_relay_config_env(filled: tuple[Path, list[int]],
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Without --config the file comes from $RELAY_CONFIG."""
    path, _ = filled
    monkeypatch.setenv("RELAY_CONFIG", str(path))
    assert main(["dead-letters"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 dead letter(s)"


def test_dead_letters_empty_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty spool lists no rows and says so."""
    path = write_config(tmp_path, "")
    assert main(["dead-letters", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [lines[0], "0 dead letter(s)"]


def test_dead_letters_without_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --config or $RELAY_CONFIG dead-letters exits 2 explaining why."""
    assert main(["dead-letters"]) == 2
    err = capsys.readouterr().err
    assert "no configuration" in err
    assert "RELAY_CONFIG" in err


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand is an argparse usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
