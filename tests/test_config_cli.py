"""Configuration and the command line: files, environment, validation that names the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from marketpipe.cli import COMMANDS
from marketpipe.config import ConfigError, load_settings


def test_defaults_need_nothing() -> None:
    settings = load_settings(environ={})
    assert settings.publish_interval_ms == 100
    assert settings.subject_prefix == ""
    assert settings.etcd_endpoints == []


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "mp.yaml"
    conf.write_text("NATS_URLS: nats://a:1,nats://b:2\npublish_interval_ms: 250\n")
    settings = load_settings(conf, environ={"MARKETPIPE_PUBLISH_INTERVAL_MS": "50"})
    assert settings.nats_urls == ["nats://a:1", "nats://b:2"]
    assert settings.publish_interval_ms == 50


def test_toml_files_are_read(tmp_path: Path) -> None:
    conf = tmp_path / "mp.toml"
    conf.write_text('etcd_endpoints = ["http://127.0.0.1:2379"]\npriority_symbols = ["btc-usdt"]\n')
    settings = load_settings(conf, environ={})
    assert settings.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert settings.priority_symbols == ["BTCUSDT"]


def test_an_unknown_key_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"NATS_URL'.*MARKETPIPE_NATS_URL"):
        load_settings(environ={"MARKETPIPE_NATS_URL": "nats://x:1"})
    conf = tmp_path / "mp.yaml"
    conf.write_text("publish_intervall_ms: 5\n")
    with pytest.raises(ConfigError, match="PUBLISH_INTERVALL_MS"):
        load_settings(conf, environ={})


def test_a_bad_value_names_the_key_and_what_was_expected() -> None:
    with pytest.raises(ConfigError, match=r"PUBLISH_INTERVAL_MS.*integer.*'soon'"):
        load_settings(environ={"MARKETPIPE_PUBLISH_INTERVAL_MS": "soon"})
    with pytest.raises(ConfigError, match=r"LOG_LEVEL.*one of"):
        load_settings(environ={"MARKETPIPE_LOG_LEVEL": "loud"})


def test_an_unreadable_or_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    with pytest.raises(ConfigError, match="not valid"):
        load_settings(bad, environ={})
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listing, environ={})


def _marketpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketpipe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_documents_its_options(command: str) -> None:
    result = _marketpipe(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout and "--config" in result.stdout


def test_start_up_stops_on_a_bad_setting_naming_it() -> None:
    import os

    env = {**os.environ, "MARKETPIPE_REDIS_PREFX": "x"}
    result = _marketpipe("trades", "--port", "0", env=env)
    assert result.returncode == 2
    assert "REDIS_PREFX" in result.stderr
