"""The deployment files (`Dockerfile`, `.dockerignore`, `deploy/`), checked with the tools that run here:
the Dockerfile's essentials (parsed, not built: no registry access) and its healthcheck command run against a real
server; the baked-in config loads; nginx's sample passes `nginx -t` and proxies https + wss to a real server;
the systemd unit passes `systemd-analyze verify`; the compose file passes `docker compose config` when the
client and its compose plugin are installed. A missing tool skips its test, saying which.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_compose_file_passes_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker client is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"docker compose plugin missing: {(probe.stderr or probe.stdout).strip().splitlines()[0]}")
    env = {**os.environ, "GUST_HTTP_API_KEY": "k", "GUST_CLIENT_TOKEN_HMAC_SECRET_KEY": "s"}
    proc = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
