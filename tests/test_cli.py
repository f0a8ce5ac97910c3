"""The command line (`python -m server <command>`) as a user runs it: real subprocesses, real files, real exit codes.

Commands: genconfig, checkconfig, gentoken, checktoken, version, serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from server import __version__

from .wsclient import RawClient

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["genconfig", "checkconfig", "gentoken", "checktoken", "version", "serve"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GUST_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run(*args)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def fails(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run(*args)
    assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
    assert proc.stderr.strip(), (args, "no reason on stderr", proc.stdout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def genconfig(tmp_path: Path, name: str = "config.json") -> tuple[Path, dict[str, Any]]:
    path = tmp_path / name
    ok("genconfig", "--config", str(path))
    return path, json.loads(path.read_text())


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def secret_of(config: dict[str, Any]) -> str:
    return str(config["client"]["token"]["hmac_secret_key"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- version, help -------------------------------------------------------------------------------------------


def test_version() -> None:
    proc = ok("version")
    assert proc.stdout.strip() == f"gust {__version__}"


def test_top_level_help_lists_commands() -> None:
    proc = ok("--help")
    for command in COMMANDS:
        assert command in proc.stdout, (command, proc.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    proc = ok(command, "--help")
    assert proc.stdout.strip()
    assert "usage" in proc.stdout.lower()


def test_unknown_command_fails() -> None:
    proc = run("frobnicate")
    assert proc.returncode != 0


# --- genconfig -----------------------------------------------------------------------------------------------


def test_genconfig_writes_a_starter_config(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    secret = secret_of(config)
    assert isinstance(secret, str) and len(secret) >= 32
    api_key = config["http_api"]["key"]
    assert isinstance(api_key, str) and len(api_key) >= 16
    assert api_key != secret
    names = [ns["name"] for ns in config["channel"]["namespaces"]]
    assert "chat" in names

    # The file loads with Gust's own loader (what `serve` would use).
    from server.config_load import load_config

    loaded = load_config(path)
    assert loaded.http_api.key == api_key
    assert loaded.client.token.hmac_secret_key == secret
    assert loaded.namespace_options("chat") is not None


def test_genconfig_secrets_are_fresh(tmp_path: Path) -> None:
    _, first = genconfig(tmp_path, "one.json")
    _, second = genconfig(tmp_path, "two.json")
    assert secret_of(first) != secret_of(second)
    assert first["http_api"]["key"] != second["http_api"]["key"]


def test_genconfig_refuses_to_overwrite(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    before = path.read_text()
    proc = fails("genconfig", "--config", str(path))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert path.read_text() == before

    ok("genconfig", "--config", str(path), "--force")
    after = json.loads(path.read_text())
    assert secret_of(after) != secret_of(config)


def test_genconfig_refuses_to_overwrite_any_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text("precious")
    fails("genconfig", "--config", str(path))
    assert path.read_text() == "precious"


# --- checkconfig ---------------------------------------------------------------------------------------------


def test_checkconfig_accepts_a_generated_config(tmp_path: Path) -> None:
    path, _ = genconfig(tmp_path)
    proc = ok("checkconfig", "--config", str(path))
    assert "ok" in proc.stdout.lower()


@pytest.mark.parametrize("data", [
    {},
    {"client": {"ping_interval": 30, "pong_timeout": 10}},
    {"client": {"ping_interval": "30s", "pong_timeout": "10s"}},
    {"http_api": {"key": "k", "insecure": False, "max_body_size": 2048}},
    {"channel": {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "1h"}]}},
], ids=["empty", "numeric duration", "string durations", "http_api", "namespace"])
def test_checkconfig_accepts_valid_files(tmp_path: Path, data: dict[str, Any]) -> None:
    path = write_json(tmp_path / "c.json", data)
    proc = ok("checkconfig", "--config", str(path))
    assert "ok" in proc.stdout.lower()


def test_checkconfig_accepts_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http_api]\nkey = "k"\n\n[client]\nping_interval = "30s"\n')
    ok("checkconfig", "--config", str(path))


@pytest.mark.parametrize(("data", "key"), [
    ({"client": {"ping_intervl": "5s"}}, "client.ping_intervl"),
    ({"http_api": {"insecure": "yes"}}, "http_api.insecure"),
    ({"http_api": {"max_body_size": "big"}}, "http_api.max_body_size"),
    ({"http_server": {"port": 70000}}, "http_server.port"),
    ({"client": {"ping_interval": "soon"}}, "client.ping_interval"),
    ({"nonsense": 1}, "nonsense"),
], ids=["typo", "bool type", "int type", "port range", "duration", "top-level unknown"])
def test_checkconfig_names_the_bad_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    path = write_json(tmp_path / "c.json", data)
    proc = fails("checkconfig", "--config", str(path))
    assert key in proc.stderr, proc.stderr


def test_checkconfig_unparsable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fails("checkconfig", "--config", str(bad))
    fails("checkconfig", "--config", str(tmp_path / "missing.json"))


# --- gentoken, checktoken ------------------------------------------------------------------------------------


def test_gentoken(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    proc = ok("gentoken", "--config", str(path), "-u", "alice", "--ttl", "120", "--info", '{"name": "Alice"}')
    token = proc.stdout.strip().splitlines()[-1].strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, secret_of(config), algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert abs(claims["exp"] - (time.time() + 120)) < 15
    assert claims["info"] == {"name": "Alice"}


def test_gentoken_default_ttl_is_in_the_future(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    token = ok("gentoken", "--config", str(path), "-u", "bob").stdout.strip().splitlines()[-1].strip()
    claims = jwt.decode(token, secret_of(config), algorithms=["HS256"])
    assert claims["sub"] == "bob"
    assert "info" not in claims
    if "exp" in claims:
        assert claims["exp"] > time.time() + 60


def test_gentoken_without_a_secret_fails(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", {"http_api": {"key": "k"}})
    fails("gentoken", "--config", str(path), "-u", "alice")


def test_checktoken_valid(tmp_path: Path) -> None:
    path, _ = genconfig(tmp_path)
    token = ok("gentoken", "--config", str(path), "-u", "carol", "--ttl", "600").stdout.strip().splitlines()[-1]
    proc = ok("checktoken", "--config", str(path), token.strip())
    assert "carol" in proc.stdout


def test_checktoken_expired(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    token = jwt.encode({"sub": "dave", "exp": int(time.time()) - 60}, secret_of(config), algorithm="HS256")
    proc = fails("checktoken", "--config", str(path), token)
    assert "expired" in proc.stderr.lower(), proc.stderr


def test_checktoken_bad_signature(tmp_path: Path) -> None:
    path, _ = genconfig(tmp_path)
    token = jwt.encode({"sub": "eve", "exp": int(time.time()) + 600}, "another-secret-another-secret-12",
                       algorithm="HS256")
    proc = fails("checktoken", "--config", str(path), token)
    assert "invalid" in proc.stderr.lower(), proc.stderr


def test_checktoken_garbage(tmp_path: Path) -> None:
    path, _ = genconfig(tmp_path)
    proc = fails("checktoken", "--config", str(path), "not-a-token")
    assert "invalid" in proc.stderr.lower(), proc.stderr


def test_token_from_another_generated_config_is_invalid(tmp_path: Path) -> None:
    one, _ = genconfig(tmp_path, "one.json")
    two, _ = genconfig(tmp_path, "two.json")
    token = ok("gentoken", "--config", str(one), "-u", "frank").stdout.strip().splitlines()[-1].strip()
    ok("checktoken", "--config", str(one), token)
    proc = fails("checktoken", "--config", str(two), token)
    assert "invalid" in proc.stderr.lower(), proc.stderr


# --- round trip: genconfig → checkconfig → serve → connect with a gentoken token ----------------------------


async def wait_healthy(url: str, proc: asyncio.subprocess.Process, deadline: float) -> None:
    client = AsyncHTTPClient()
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            resp = await client.fetch(url, raise_error=False, request_timeout=2)
            if resp.code == 200:
                return
            status = str(resp.code)
        except OSError as exc:  # not listening yet
            status = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"serve did not become healthy: {status}")
        await asyncio.sleep(0.1)


@pytest.mark.gen_test(timeout=60)
async def test_round_trip_genconfig_checkconfig_serve_and_connect(tmp_path: Path) -> None:
    path, config = genconfig(tmp_path)
    ok("checkconfig", "--config", str(path))
    token = ok("gentoken", "--config", str(path), "-u", "grace", "--ttl", "300",
               "--info", '{"name": "Grace"}').stdout.strip().splitlines()[-1].strip()

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GUST_CONFIG", None)
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "--config", str(path), "--port", str(port),
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    client: RawClient | None = None
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/health", proc, time.monotonic() + 20)

        client = await RawClient.open(f"ws://127.0.0.1:{port}/connection/websocket")
        reply = await client.connect(token=token)
        assert reply["connect"]["client"]
        subscribed = await client.command("subscribe", {"channel": "chat:index"})
        assert "subscribe" in subscribed, subscribed

        # The generated API key works against the served process.
        api_key = config["http_api"]["key"]
        resp = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/api/publish", method="POST", raise_error=False,
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            body=json.dumps({"channel": "chat:index", "data": {"from": "api"}}),
        )
        assert resp.code == 200, (resp.code, resp.body)
        assert "result" in json.loads(resp.body)
        assert (await client.push("pub"))["pub"]["data"] == {"from": "api"}
        client.close()
        client = None

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0, log_path.read_text(errors="replace")
    finally:
        if client is not None:
            client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
