"""TLS served directly by Gust (`http_server.tls`, Centrifugo v6's names), against a real server process and a
certificate this test generates: https and wss (connect, subscribe, a publication sent through the API over
https) trusting only that certificate; the three PEM sources (content, base64, file path); `tls_external`; and
bad TLS settings that stop the server before it listens, with exit code 2 and the key named.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from server.config import ConfigError, TlsConfig
from server.config_load import tls_context

from .procs import API_KEY, GustProcess, free_port
from .wsclient import RawClient


def make_certificate(common_name: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 (PEM) and its private key (PEM, unencrypted)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert_pem, key_pem


class TlsGustProcess(GustProcess):
    """A GustProcess whose readiness check speaks https, trusting `cafile` only."""

    def __init__(self, workdir: Path, cafile: Path, extra: dict[str, Any]) -> None:
        super().__init__(workdir, extra=extra)
        self.client_context = ssl.create_default_context(cafile=str(cafile))

    def https(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=self.client_context)
        try:
            headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _health(self) -> int | None:
        try:
            return self.https("GET", "/health")[0]
        except (OSError, http.client.HTTPException):
            return None


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, str, str]:
    cert_pem, key_pem = make_certificate()
    cert_file = tmp_path / "server.crt"
    cert_file.write_text(cert_pem)
    return cert_file, cert_pem, key_pem




@pytest.mark.gen_test(timeout=40)
async def test_https_and_wss_with_a_generated_certificate(
        tmp_path: Path, certificate: tuple[Path, str, str], procs: list[GustProcess]) -> None:
    cert_file, _, key_pem = certificate
    # the certificate as a file path, the key as PEM content: both forms of Centrifugo's PEMData
    server = TlsGustProcess(tmp_path / "srv", cert_file, {
        "http_server": {"tls": {"enabled": True, "cert_pem": str(cert_file), "key_pem": key_pem}}})
    procs.append(server)
    await server.start_async()
    assert f"Gust is running: https://127.0.0.1:{server.port}/" in server.output()

    status, body = server.https("GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    # plain http on the TLS port gets no HTTP answer
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/health")
        plain.getresponse()
    plain.close()
    # an untrusting client refuses the self-signed certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5,
                                    context=ssl.create_default_context()).request("GET", "/health")

    url = f"wss://127.0.0.1:{server.port}/connection/websocket"
    client = RawClient(await websocket_connect(HTTPRequest(url, ssl_options=server.client_context)))
    try:
        await client.connect()
        reply = await client.command("subscribe", {"channel": "chat:tls"})
        assert "subscribe" in reply, reply
        status, body = server.https("POST", "/api/publish", {"channel": "chat:tls", "data": {"over": "tls"}})
        assert status == 200, body
        assert "result" in json.loads(body), body
        assert (await client.push("pub"))["pub"]["data"] == {"over": "tls"}
    finally:
        client.close()


def test_tls_external_leaves_the_internal_port_plain(
        tmp_path: Path, certificate: tuple[Path, str, str], procs: list[GustProcess]) -> None:
    cert_file, cert_pem, key_pem = certificate
    internal_port = free_port()
    server = TlsGustProcess(tmp_path / "srv", cert_file, {"http_server": {
        "tls": {"enabled": True, "cert_pem": cert_pem, "key_pem": key_pem}, "tls_external": True,
        "internal_port": internal_port}})
    procs.append(server)
    server.spawn()
    conn = http.client.HTTPConnection("127.0.0.1", internal_port, timeout=5)
    for _ in range(200):  # the internal port (plain http) is ready once /health answers there
        try:
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
            break
        except OSError:
            conn.close()
            server.wait_exit(0.05)
            server._check_alive()
    else:
        raise AssertionError(server.output())
    conn.close()
    status, _ = server.https("POST", "/api/info", {})
    assert status == 200


def test_pem_sources_content_base64_and_file(tmp_path: Path) -> None:
    cert_pem, key_pem = make_certificate()
    key_file = tmp_path / "server.key"
    key_file.write_text(key_pem)
    b64 = base64.b64encode(cert_pem.encode()).decode()
    for tls in (TlsConfig(True, cert_pem, key_pem), TlsConfig(True, b64, str(key_file))):
        assert isinstance(tls_context(tls), ssl.SSLContext)
    with pytest.raises(ConfigError) as info:
        tls_context(TlsConfig(True, cert_pem, ""))
    assert info.value.key == "http_server.tls.key_pem"


def bad_settings(tmp_path: Path) -> list[tuple[dict[str, Any], str, str]]:
    """(tls settings, key named in the error, text in the error)"""
    cert_pem, key_pem = make_certificate()
    _, other_key = make_certificate()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    broken = cert_pem.replace(cert_pem.splitlines()[3], "A" * 64)
    return [
        ({"cert_pem": cert_pem}, "http_server.tls.key_pem", "required when TLS is enabled"),
        ({"cert_pem": str(tmp_path / "missing.crt"), "key_pem": key_pem}, "http_server.tls.cert_pem",
         "the path of an existing PEM file"),
        ({"cert_pem": str(junk), "key_pem": key_pem}, "http_server.tls.cert_pem", "holds no PEM data"),
        ({"cert_pem": broken, "key_pem": key_pem}, "http_server.tls.cert_pem", "not a valid PEM certificate"),
        ({"cert_pem": cert_pem, "key_pem": other_key}, "http_server.tls.key_pem", "matching cert_pem"),
        ({"cert_pem": cert_pem, "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
         "http_server.tls.key_pem", "unencrypted private key"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_tls_settings_stop_the_server_before_it_listens(tmp_path: Path, case: int,
                                                            procs: list[GustProcess]) -> None:
    tls, key, text = bad_settings(tmp_path)[case]
    server = GustProcess(tmp_path / "srv", extra={"http_server": {"tls": {"enabled": True, **tls}}})
    procs.append(server)
    proc = server.run_to_exit()
    assert proc.returncode == 2, proc.stderr
    assert f"gust: config error: {key}: " in proc.stderr, proc.stderr
    assert text in proc.stderr, proc.stderr
    assert "Gust is running" not in proc.stdout
    assert "PRIVATE KEY" not in proc.stderr  # key material is never echoed
