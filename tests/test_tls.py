"""HTTPS by default: the self-signed certificate, and the page and socket over TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import stat
import threading

import numpy as np
import pytest
import requests
import socketio
from cryptography import x509

from server.cli import build, tls_context
from server.options import ServerOptions, parse_options
from server.tls import certificate_names, ensure_certificate, server_context
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import RunningServer, load_wav


def sans(cert_path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def https_server(cert_dir):
    cert, key = ensure_certificate(cert_dir, "127.0.0.1")
    srv = RunningServer(ServerOptions(), FakeEngine(Script(reply_seconds=0.5)), ssl_context=server_context(cert, key))
    yield srv, cert
    srv.stop()


def test_certificate_has_the_right_names_and_a_private_key(tmp_path):
    cert, key = ensure_certificate(tmp_path / "tls", "192.168.7.9")
    names = sans(cert)
    assert {"localhost", "127.0.0.1", "::1", "192.168.7.9", socket.gethostname()} <= names
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    assert loaded.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # kept: a second start reuses it; a new listen address makes a new one
    before = cert.read_bytes()
    assert ensure_certificate(tmp_path / "tls", "192.168.7.9")[0].read_bytes() == before
    ensure_certificate(tmp_path / "tls", "10.1.2.3")
    assert "10.1.2.3" in sans(cert) and cert.read_bytes() != before


def test_wildcard_listen_address_is_not_a_name():
    assert "0.0.0.0" not in certificate_names("0.0.0.0")
    assert all(n for n in certificate_names(None))
    ipaddress.ip_address(certificate_names(None)[1])


def test_tls_options(tmp_path):
    assert tls_context(ServerOptions(no_tls=True)) is None
    ctx = tls_context(ServerOptions(tls_dir=str(tmp_path / "auto")))
    assert isinstance(ctx, ssl.SSLContext) and (tmp_path / "auto" / "cert.pem").is_file()
    own_cert, own_key = ensure_certificate(tmp_path / "own", None)
    assert isinstance(tls_context(ServerOptions(cert=str(own_cert), key=str(own_key))), ssl.SSLContext)


def test_page_and_health_over_https(https_server):
    srv, cert = https_server
    page = requests.get(srv.url + "/", verify=str(cert), timeout=10)
    assert page.status_code == 200 and "socket.io.min.js" in page.text
    assert requests.get(srv.url + "/static/vendor/socket.io.min.js", verify=str(cert), timeout=10).ok
    assert requests.get(srv.url + "/healthz", verify=str(cert), timeout=10).json()["ok"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(srv.url + "/", verify=True, timeout=10)  # untrusted without the cert: as it must be


def test_socket_over_wss_with_verified_certificate(https_server):
    srv, cert = https_server

    async def talk() -> list[str]:
        ctx = ssl.create_default_context(cafile=str(cert))
        client = socketio.AsyncClient(reconnection=False, websocket_extra_options={"ssl": ctx})
        seen: list[str] = []
        done = asyncio.Event()

        @client.on("*")
        async def any_event(event, *args):
            seen.append(event)
            if event == "reply_end":
                done.set()

        await client.connect(srv.url, transports=["websocket"], wait_timeout=10)
        assert client.transport() == "websocket"
        await client.call("control", {"type": "start"}, timeout=10)
        pcm = np.concatenate([load_wav("question_en"), np.zeros(8000, np.int16)])
        for off in range(0, pcm.size, 640):  # 40 ms packets at 2x real time (within the rate limit's burst)
            await client.emit("audio", pcm[off : off + 640].tobytes())
            await asyncio.sleep(0.02)
        await asyncio.wait_for(done.wait(), 15)
        await client.call("control", {"type": "ping"}, timeout=10)  # everything sent before it has arrived
        await client.disconnect()
        return seen

    seen = asyncio.run(talk())
    assert "vad" in seen and "reply_audio" in seen and "error" not in seen


def test_idle_tcp_connection_does_not_block_the_handshake(https_server):
    srv, cert = https_server
    port = int(srv.url.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port))  # connects, never says hello
    try:
        assert requests.get(srv.url + "/healthz", verify=str(cert), timeout=5).ok
    finally:
        idle.close()


def test_plain_http_on_the_tls_port_is_refused_and_the_server_goes_on(https_server):
    srv, cert = https_server
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url.replace("https://", "http://") + "/", timeout=5)
    assert requests.get(srv.url + "/healthz", verify=str(cert), timeout=5).ok


def test_command_line_path_serves_https_with_its_own_certificate(tmp_path):
    options = parse_options(["--model_path", "/ckpt", "--ip", "127.0.0.1", "--port", "0",
                             "--tls_dir", str(tmp_path / "tls")])
    _, server = build(options, FakeEngine())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cert = tmp_path / "tls" / "cert.pem"
        assert "127.0.0.1" in sans(cert)
        r = requests.get(f"https://127.0.0.1:{server.server_port}/healthz", verify=str(cert), timeout=10)
        assert r.json()["ok"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
