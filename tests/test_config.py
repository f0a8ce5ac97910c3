"""Configuration loading: file formats, env and flag precedence, errors that name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, parse_duration
from server.config_load import load_config


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("25s", 25.0), ("720h", 2592000.0), ("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0), (3, 3.0), ("1.5s", 1.5)],
)
def test_durations_accept_centrifugo_strings(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize("text", ["25", "s", "10 parsecs", "-1s", True, None, "1h x"])
def test_bad_durations_name_the_key(text: object) -> None:
    with pytest.raises(ConfigError, match=r"client\.ping_interval"):
        parse_duration(text, "client.ping_interval")


def test_defaults_without_file_are_the_development_setup() -> None:
    config = load_config(None, {}, {})
    assert config.development
    assert config.http_server.port == 8000
    assert config.client.allow_anonymous_connect_without_token
    chat = config.namespace_options("chat")
    assert chat is not None and chat.presence and chat.force_recovery and chat.history_enabled


def test_json_and_toml_files_use_centrifugo_names(tmp_path: Path) -> None:
    data = {
        "http_server": {"port": 9001},
        "client": {"token": {"hmac_secret_key": "k"}, "ping_interval": "10s", "pong_timeout": "4s"},
        "channel": {"namespaces": [{"name": "news", "history_size": 10, "history_ttl": "1h"}]},
    }
    from_json = load_config(write(tmp_path, "c.json", json.dumps(data)), {}, {})
    toml = """
[http_server]
port = 9001
[client]
ping_interval = "10s"
pong_timeout = "4s"
[client.token]
hmac_secret_key = "k"
[[channel.namespaces]]
name = "news"
history_size = 10
history_ttl = "1h"
"""
    from_toml = load_config(write(tmp_path, "c.toml", toml), {}, {})
    assert from_json == from_toml
    assert not from_json.development
    assert from_json.client.ping_interval == 10.0
    news = from_json.namespace_options("news")
    assert news is not None and news.history_ttl == 3600.0
    assert from_json.namespace_options("chat") is None


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"http_server": {"port": 9001, "address": "::1"}}')
    env = {"GUST_HTTP_SERVER_PORT": "9002", "GUST_CLIENT_ALLOWED_ORIGINS": "https://a.example,https://b.example"}
    config = load_config(path, env, {"http_server": {"port": 9003}})
    assert config.http_server.port == 9003
    assert config.http_server.address == "::1"
    assert config.client.allowed_origins == ("https://a.example", "https://b.example")
    assert load_config(path, env, {}).http_server.port == 9002


def test_env_sets_nested_and_list_options() -> None:
    env = {
        "GUST_CLIENT_TOKEN_HMAC_SECRET_KEY": "s",
        "GUST_CLIENT_PING_INTERVAL": "30s",
        "GUST_CHANNEL_NAMESPACES": '[{"name": "room", "presence": true}]',
        "GUST_CLIENT_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "false",
    }
    config = load_config(None, env, {})
    assert config.client.token.hmac_secret_key == "s"
    assert config.client.ping_interval == 30.0
    assert [ns.name for ns in config.channel.namespaces] == ["room"]
    assert not config.client.allow_anonymous_connect_without_token


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"http_server": {"prot": 1}}, "http_server.prot"),
        ({"http_server": {"port": "80"}}, "http_server.port"),
        ({"client": {"channel_limit": True}}, "client.channel_limit"),
        ({"client": {"ping_interval": "soon"}}, "client.ping_interval"),
        ({"client": {"pong_timeout": "30s"}}, "client.pong_timeout"),
        ({"engine": {"type": "etcd"}}, "engine.type"),
        ({"channel": {"namespaces": [{"name": "x"}]}}, "channel.namespaces[0].name"),
        ({"channel": {"namespaces": [{"name": "ok", "presense": True}]}}, "channel.namespaces[0].presense"),
        ({"channel": {"namespaces": [{"name": "ok", "force_recovery": True}]}}, "channel.namespaces[0]"),
        ({"channel": {"without_namespace": {"history_size": 5}}}, "channel.without_namespace"),
        ({"channel": {"namespaces": [{"name": "ab", "channel_regex": "("}]}}, "channel.namespaces[0].channel_regex"),
        ({"client": {"connection_limit": -1}}, "client.connection_limit"),
        ({"client": {"command_rate_limit": {"rate": -1}}}, "client.command_rate_limit.rate"),
        ({"client": {"command_rate_limit": {"burst": 0}}}, "client.command_rate_limit.burst"),
        ({"http_server": {"port": 8000, "internal_port": 8000}}, "http_server.internal_port"),
        ({"http_server": {"header_timeout": 0}}, "http_server.header_timeout"),
        ({"websocket": {"message_size_limit": 0}}, "websocket.message_size_limit"),
        ({"websocket_max_message_size": 1, "websocket": {"message_size_limit": 2}}, "websocket_max_message_size"),
        ({"watchdog": {"lag_threshold": "soon"}}, "watchdog.lag_threshold"),
        ({"log_format": "xml"}, "log_format"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "c.json", json.dumps(data)), {}, {})
    assert info.value.key == key


def test_limits_and_observability_options_from_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({
        "websocket_max_message_size": 4096, "watchdog": {"lag_threshold": "50ms"},
        "http_server": {"internal_port": 9100, "header_timeout": "5s"}}))
    config = load_config(path, {"GUST_CLIENT_COMMAND_RATE_LIMIT_RATE": "20", "GUST_LOG_FORMAT": "json"}, {})
    assert config.websocket.message_size_limit == 4096  # the alias lands on the Centrifugo v6 name
    assert config.watchdog.lag_threshold == 0.05 and config.http_server.header_timeout == 5.0
    assert config.http_server.internal_port == 9100
    assert config.client.command_rate_limit.rate == 20 and config.log_format == "json"


def test_env_with_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"http_server\.port"):
        load_config(None, {"GUST_HTTP_SERVER_PORT": "eighty"}, {})


def test_serve_refuses_bad_config_before_listening(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"client": {"queue_max_size": "big"}}')
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(path), "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "client.queue_max_size" in proc.stderr
    assert "Gust is running" not in proc.stdout
