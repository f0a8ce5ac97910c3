"""The deployment files (`Dockerfile`, `.dockerignore`, `deploy/`), checked with the tools that run here:
the Dockerfile's essentials (parsed, not built: no registry access) and its healthcheck command run against a real
server; the baked-in config loads; nginx's sample passes `nginx -t` and proxies https + wss to a real server;
the systemd unit passes `systemd-analyze verify`; the compose files pass `config` of `docker compose` (the v2
plugin) or else Debian's `docker-compose` (v1), and the two-node file, as the tool resolves it, runs Redis and two
Gust nodes on it. A missing tool skips its test, saying which.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from server.config_load import load_config

from .procs import REPO, GustProcess, free_port
from .test_tls import TlsGustProcess, make_certificate
from .wsclient import RawClient

DEPLOY = REPO / "deploy"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    logical, out = "", []
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        logical = ""
    return out


def healthcheck_command() -> list[str]:
    args = dict(dockerfile_instructions())["HEALTHCHECK"]
    exec_form = args[args.index("CMD") + 3:].strip()
    command = json.loads(exec_form)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command




# --- Dockerfile --------------------------------------------------------------------------------------------


def test_dockerfile_has_the_essentials() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    args = dict(instructions)  # the last of each
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", args["FROM"]), args["FROM"]
    assert args["USER"] not in ("root", "0", "0:0"), "runs as root"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "USER before the last RUN"
    assert "/var/lib/gust" in args["VOLUME"]
    assert args["EXPOSE"].split() == ["8000"]
    assert "/health" in args["HEALTHCHECK"]
    assert re.search(r"--interval=\d+s", args["HEALTHCHECK"])
    assert "GUST_CONFIG=/etc/gust/gust.json" in args["ENV"]
    assert keywords[-1] == "CMD"
    # every COPY source exists and gets past .dockerignore (which lets in only what it lists)
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for keyword, arg in instructions:
        if keyword == "COPY":
            for source in arg.split()[:-1]:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_baked_in_config_is_valid_and_not_the_development_setup() -> None:
    config = load_config(DEPLOY / "gust.json", environ={})
    assert not config.development
    assert config.http_server.address == "0.0.0.0"
    assert config.data_dir == "/var/lib/gust"
    assert not config.chat.enabled


def test_healthcheck_command_passes_against_a_live_server_and_fails_without_one(
        tmp_path: Path, procs: list[GustProcess]) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable
    server = GustProcess(tmp_path / "srv")
    procs.append(server)
    server.start()
    env = {"PATH": os.environ.get("PATH", ""), "GUST_HTTP_SERVER_PORT": str(server.port)}
    assert subprocess.run(command, env=env, capture_output=True, timeout=20).returncode == 0
    server.kill()
    assert subprocess.run(command, env=env, capture_output=True, timeout=20).returncode != 0


# --- nginx ---------------------------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    return found


def nginx_setup(workdir: Path, upstream: int, http_port: int, https_port: int) -> tuple[Path, Path]:
    """The sample inside a minimal main config, on loopback ports, with a generated certificate.
    (main config, certificate)"""
    workdir.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_certificate()
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    key.chmod(0o600)
    site = (DEPLOY / "nginx.conf").read_text()
    for old, new in (("/etc/ssl/certs/push.example.com.pem", str(cert)),
                     ("/etc/ssl/private/push.example.com.key", str(key)),
                     ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"), ("listen [::]:80;", ""),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"), ("listen [::]:443 ssl;", "")):
        assert old in site, old
        site = site.replace(old, new)
    (workdir / "site.conf").write_text(site)
    temp = workdir / "temp"
    temp.mkdir()
    temp.chmod(0o777)
    main = workdir / "nginx.conf"
    main.write_text(f"""pid {workdir}/nginx.pid;
error_log stderr;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    include {workdir}/site.conf;
}}
""")
    return main, cert


def test_nginx_sample_passes_nginx_t(tmp_path: Path) -> None:
    nginx = nginx_binary()
    main, _ = nginx_setup(tmp_path, 8000, free_port(), free_port())
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr
    ws = re.search(r"location = /connection/websocket \{(.*?)\}", (DEPLOY / "nginx.conf").read_text(), re.S)
    assert ws is not None
    block = ws.group(1)
    assert "proxy_set_header Upgrade $http_upgrade;" in block
    assert "proxy_set_header Connection $connection_upgrade;" in block
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        match = re.search(rf"{name} (\d+)s;", block)
        assert match and int(match.group(1)) > 25 + 8, f"{name} must outlast ping_interval + pong_timeout"


@pytest.mark.gen_test(timeout=60)
async def test_nginx_sample_proxies_https_and_wss_to_gust(tmp_path: Path, procs: list[GustProcess]) -> None:
    nginx = nginx_binary()
    server = GustProcess(tmp_path / "srv")
    procs.append(server)
    await server.start_async()
    https_port = free_port()
    main, cert = nginx_setup(tmp_path / "nginx", server.port, free_port(), https_port)
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path / "nginx"), "-c", str(main), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # a client that reaches Gust through nginx, with the same readiness check and https helper
        front = TlsGustProcess(tmp_path / "front", cert, {})
        front.port = https_port
        deadline = time.monotonic() + 15
        while front._health() != 404:  # nginx is up; /health is not exposed through it
            assert proxy.poll() is None, proxy.communicate()[1].decode()
            assert time.monotonic() < deadline, "nginx did not come up"
            await asyncio.sleep(0.05)
        origin = f"https://127.0.0.1:{https_port}"
        request = HTTPRequest(f"wss://127.0.0.1:{https_port}/connection/websocket",
                              ssl_options=front.client_context, headers={"Origin": origin})
        client = RawClient(await websocket_connect(request))
        try:
            await client.connect()
            assert "subscribe" in await client.command("subscribe", {"channel": "chat:proxied"})
            status, body = front.https("POST", "/api/publish", {"channel": "chat:proxied", "data": {"via": "nginx"}})
            assert status == 200, body
            assert (await client.push("pub"))["pub"]["data"] == {"via": "nginx"}
        finally:
            client.close()
    finally:
        proxy.send_signal(signal.SIGQUIT)
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)


# --- systemd -------------------------------------------------------------------------------------------------


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "gust.service").read_text()
    nofile = re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)
    assert nofile is not None and int(nofile.group(1)) >= 65536
    assert re.search(r"^User=gust$", unit, re.M)
    assert re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    # verify checks that ExecStart's binary exists: point it at this checkout's gust script
    here = Path(sys.executable).parent / "gust"
    if not here.exists():
        pytest.skip(f"{here} is not installed (make install)")
    assert "/opt/gust/.venv/bin/gust " in unit
    (tmp_path / "gust.service").write_text(unit.replace("/opt/gust/.venv/bin/gust ", f"{here} "))
    proc = subprocess.run([tool, "verify", str(tmp_path / "gust.service")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys or bad values (it ignores them) but prints them: no output at all
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


# --- docker compose ------------------------------------------------------------------------------------------


COMPOSE_FILES = ("docker-compose.yml", "docker-compose.single.yml")
COMPOSE_SECRETS = {"GUST_HTTP_API_KEY": "api-key-from-env", "GUST_CLIENT_TOKEN_HMAC_SECRET_KEY": "secret-from-env"}


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) when it answers, else Debian's `docker-compose` (v1), else skip.
    Both read the compose files without a Docker daemon for `config`."""
    reasons = []
    docker = shutil.which("docker")
    if docker is None:
        reasons.append("the docker client is not installed")
    else:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
        first = ((probe.stderr or probe.stdout).strip().splitlines() or ["no output"])[0]
        reasons.append(f"docker compose plugin missing: {first}")
    v1 = shutil.which("docker-compose")
    if v1 is not None:
        return [v1]
    reasons.append("docker-compose is not installed (Debian: apt-get install docker-compose)")
    pytest.skip("; ".join(reasons))


def run_compose(command: list[str], name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GUST_", "COMPOSE_"))}, **COMPOSE_SECRETS}
    return subprocess.run([*command, "-f", str(DEPLOY / name), *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=DEPLOY)


def compose_config(name: str) -> dict[str, Any]:
    """The compose file as the tool resolves it (anchors merged, variables interpolated), as a dict.
    The v2 plugin prints JSON; v1 prints only YAML, read with PyYAML here if installed, else with the Python that
    runs docker-compose (v1 is a Python program that depends on PyYAML): no YAML parser is added to Gust's deps."""
    command = compose_command()
    if command[-1] == "compose":
        proc = run_compose(command, name, "config", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        loaded = json.loads(proc.stdout)
        assert isinstance(loaded, dict)
        return loaded
    proc = run_compose(command, name, "config")
    assert proc.returncode == 0, proc.stderr
    to_json = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    python = sys.executable
    if importlib.util.find_spec("yaml") is None:
        first = Path(command[0]).read_bytes()[:200].split(b"\n")[0].decode(errors="replace")
        if not (first.startswith("#!") and "python" in first):
            pytest.skip(f"no YAML parser to read {command[0]}'s output (PyYAML is not installed)")
        python = first[2:].strip().split()[0]
    converted = subprocess.run([python, "-c", to_json], input=proc.stdout, capture_output=True, text=True,
                               timeout=30)
    if converted.returncode != 0:
        pytest.skip(f"no YAML parser to read {command[0]}'s output: {converted.stderr.strip().splitlines()[-1:]}")
    loaded = json.loads(converted.stdout)
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_pass_compose_config(name: str, tmp_path: Path) -> None:
    command = compose_command()
    proc = run_compose(command, name, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # the secrets come from the environment (or deploy/.env): without them the file refuses to start
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUST_", "COMPOSE_"))}
    (tmp_path / "empty.env").write_text("")
    proc = subprocess.run([*command, "-f", str(DEPLOY / name), "--env-file", str(tmp_path / "empty.env"),
                           "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=DEPLOY)
    assert proc.returncode != 0 and "GUST_HTTP_API_KEY" in proc.stdout + proc.stderr


def test_compose_file_runs_redis_and_two_gust_nodes_on_it() -> None:
    services = compose_config("docker-compose.yml")["services"]
    assert isinstance(services, dict)
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis.get("restart") in ("always", "unless-stopped")
    assert not redis.get("ports"), "Redis is for the Gust nodes only"
    nodes = {name: s for name, s in services.items() if "build" in s}
    assert len(nodes) == 2, sorted(services)
    published: set[str] = set()
    for name, node in nodes.items():
        assert Path(node["build"]["context"]).resolve() == REPO, name
        assert node["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        env = {k: str(v) for k, v in node["environment"].items()}
        assert env["GUST_ENGINE_TYPE"] == "redis", name
        for address in env["GUST_ENGINE_REDIS_ADDRESS"].split(","):
            match = re.fullmatch(r"rediss?://(?:[^@/]*@)?([^:/]+)(?::\d+)?(?:/\d+)?", address.strip())
            assert match and match.group(1) in services, f"{name}: {address} is not a service of this file"
        for key, value in COMPOSE_SECRETS.items():
            assert env[key] == value, f"{name}: {key} is not taken from the environment"
        assert node["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert node["healthcheck"]["test"] == ["CMD", *healthcheck_command()], f"{name}: not the image's healthcheck"
        assert node.get("restart") in ("always", "unless-stopped"), name
        assert int(node["ulimits"]["nofile"]["soft"]) >= 65536, name
        published.update(str(p["published"]) for p in node["ports"])
        # the image's baked-in config with this environment is a valid Redis-engine config
        config = load_config(DEPLOY / "gust.json", environ=env)
        assert config.engine.type == "redis"
        assert config.http_api.key == COMPOSE_SECRETS["GUST_HTTP_API_KEY"]
    assert len(published) == 2, "each node needs its own host port"
    first, second = ({k: v for k, v in n["environment"].items() if k.startswith("GUST_ENGINE_")}
                     for n in nodes.values())
    assert first == second, "the nodes must share one Redis and one prefix"


def test_compose_env_example_holds_only_placeholders() -> None:
    lines = [line for line in (DEPLOY / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    values = dict(line.split("=", 1) for line in lines)
    for key in COMPOSE_SECRETS:
        assert values[key].startswith("CHANGE-ME"), key
