"""Host allow-list (DNS rebinding), Origin check, security headers, Server banner and the access token,
against a real server with real HTTP and Socket.IO clients."""

from __future__ import annotations

import logging
import threading

import pytest
import requests
import socketio

from server import security
from server.cli import main, with_access_token
from server.options import SecurityOptions, ServerOptions, build_parser, parse_options
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeEngine
from tests.fakes.harness import RecordingClient, RunningServer, wait_until

TOKEN = "correct-horse-battery-staple-42"
OUR_THREADS = ("session-emit-", "fake-turn-", "http-")


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test closes its servers and sessions: no server or session thread of ours outlives it."""
    before = {t.ident for t in threading.enumerate()}
    yield

    def extra() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith(OUR_THREADS)]

    assert wait_until(lambda: not extra(), timeout=5), extra()


def server(**security_options) -> RunningServer:
    return RunningServer(ServerOptions(no_tls=True, security=SecurityOptions(**security_options)), FakeEngine())


def port_of(srv: RunningServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def socket_client(host: str | None = None, origin: str | None = None) -> socketio.Client:
    """A python-socketio client whose WebSocket handshake carries this Host / Origin (as a browser would)."""
    extra = {k: v for k, v in (("host", host), ("origin", origin)) if v is not None}
    return socketio.Client(reconnection=False, websocket_extra_options=extra)


def connect(client: socketio.Client, srv: RunningServer, **kw) -> None:
    client.connect(srv.url, transports=["websocket"], wait_timeout=10, **kw)


def closed(srv: RunningServer, *clients: socketio.Client) -> None:
    """Disconnect ``clients`` and check the server dropped every session."""
    for c in clients:
        if c.connected:
            c.disconnect()
    assert wait_until(lambda: not srv.state.sessions)


# ------------------------------------------------------------------ Host allow-list and Origin


def test_dns_rebinding_is_refused_for_http_and_socketio():
    with server() as srv:
        evil = f"rebind.attacker.example:{port_of(srv)}"
        for path in ("/", "/healthz", "/static/app.js", "/socket.io/?EIO=4&transport=websocket"):
            r = requests.get(srv.url + path, headers={"Host": evil, "Origin": f"http://{evil}"}, timeout=5)
            assert r.status_code == 400 and "Host not allowed" in r.text, path
        c = socket_client(host=evil, origin=f"http://{evil}")
        with pytest.raises(socketio.exceptions.ConnectionError):
            connect(c, srv)
        assert not srv.state.sessions
        closed(srv, c)


def test_default_names_and_ip_literals_are_served():
    with server() as srv:
        port = port_of(srv)
        for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST.", "192.0.2.7", "[2001:db8::1]"):
            assert requests.get(srv.url + "/healthz", headers={"Host": f"{host}:{port}"}, timeout=5).ok, host
        c = socket_client(host=f"localhost:{port}", origin=f"http://localhost:{port}")
        connect(c, srv)
        assert c.connected
        closed(srv, c)


def test_allowed_hosts_extends_the_list_and_star_allows_all():
    with server(allowed_hosts="Vita.Example:9999, .lab.example") as srv:  # any port; case-blind
        port = port_of(srv)
        ok = ("vita.example", "lab.example", "gpu1.lab.example")
        for host in ok:
            assert requests.get(srv.url + "/", headers={"Host": f"{host}:{port}"}, timeout=5).ok, host
        for host in ("evil.example", "vita.example.evil.example", "xlab.example"):
            assert requests.get(srv.url + "/", headers={"Host": host}, timeout=5).status_code == 400, host
        c = socket_client(host=f"vita.example:{port}", origin=f"https://vita.example:{port}")
        connect(c, srv)  # an --allowed_hosts name is also an accepted page origin (e.g. behind a proxy)
        assert c.connected
        closed(srv, c)
    with server(allowed_hosts="*") as srv:
        assert requests.get(srv.url + "/", headers={"Host": "anything.example"}, timeout=5).ok


def test_origin_must_be_this_server():
    with server(allowed_hosts="*") as srv:
        port = port_of(srv)
        # a page on another site, or on another port of this machine, may not open a socket
        for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null"):
            c = socket_client(origin=origin)
            with pytest.raises(socketio.exceptions.ConnectionError):
                connect(c, srv)
            closed(srv, c)
        r = requests.get(srv.url + "/socket.io/?EIO=4&transport=websocket", headers={"Origin": "http://evil.example"},
                         timeout=5)
        assert r.status_code == 400 and "Not an accepted origin" in r.text
        c = socket_client()  # same origin (websocket-client's default Origin is the URL's)
        connect(c, srv)
        assert c.connected
        closed(srv, c)


# ------------------------------------------------------------------ headers and banner


def assert_security_headers(r: requests.Response) -> None:
    csp = r.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["script-src"] == ["'self'"]  # no 'unsafe-inline' / 'unsafe-eval'
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["frame-ancestors"] == ["'none'"] and directives["object-src"] == ["'none'"]
    assert "'self'" in directives["connect-src"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "microphone=(self)" in r.headers["Permissions-Policy"]
    assert "camera=(self)" in r.headers["Permissions-Policy"]
    assert r.headers["Server"] == "vita-duplex"


def test_security_headers_on_every_response_and_no_version_banner():
    with server() as srv:
        # the Engine.IO endpoint answers itself (Flask never sees it): its reply is covered too
        for path, status in (("/", 200), ("/static/app.js", 200), ("/healthz", 200), ("/nope", 404),
                             ("/socket.io/?EIO=4&transport=websocket", 400)):
            r = requests.get(srv.url + path, timeout=5)
            assert r.status_code == status, path
            assert_security_headers(r)
            assert "Strict-Transport-Security" not in r.headers  # plain HTTP: HSTS would be ignored or wrong
            assert "werkzeug" not in r.headers["Server"].lower() and "python" not in r.headers["Server"].lower()
        refused = requests.get(srv.url + "/", headers={"Host": "evil.example"}, timeout=5)
        assert_security_headers(refused)
        assert "evil.example" not in refused.headers["Content-Security-Policy"]


def test_hsts_only_under_tls(tmp_path):
    cert, key = make_self_signed(tmp_path, ["localhost", "127.0.0.1"])
    with RunningServer(ServerOptions(), FakeEngine(), ssl_context=server_context(cert, key)) as srv:
        r = requests.get(srv.url + "/", verify=str(cert), timeout=5)
        assert_security_headers(r)
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert f"wss://127.0.0.1:{port_of(srv)}" in r.headers["Content-Security-Policy"]
        # not for localhost: HSTS pins every port of the name to HTTPS (other local dev servers)
        r = requests.get(srv.url + "/", headers={"Host": f"localhost:{port_of(srv)}"}, verify=str(cert), timeout=5)
        assert "Strict-Transport-Security" not in r.headers


# ------------------------------------------------------------------ access token


def test_socket_needs_the_token_when_set(caplog, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = security.compare_digest
    monkeypatch.setattr(security, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    caplog.set_level(logging.WARNING, logger="server.security")
    with server(access_token=TOKEN) as srv:
        for auth in (None, {"token": "guess-1234"}, {"token": 42}, "not-a-dict"):
            rc = RecordingClient(srv.url)
            with pytest.raises(socketio.exceptions.ConnectionError):
                rc.sio.connect(srv.url, transports=["websocket"], wait_timeout=10, auth=auth)
            assert rc.refused == "access token missing or wrong", auth
            rc.close()
        assert not srv.state.sessions
        assert compared and all(b == TOKEN.encode() for _, b in compared)  # the constant-time compare
        ok = RecordingClient(srv.url)
        ok.sio.connect(srv.url, transports=["websocket"], wait_timeout=10, auth={"token": TOKEN})
        assert ok.wait_for(lambda c: c.named("hello"))
        ok.close()
        closed(srv)
    refusals = [r.getMessage() for r in caplog.records if "refused a Socket.IO connection" in r.getMessage()]
    assert len(refusals) == 4 and not any("guess-1234" in m for m in refusals)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_metrics_needs_the_bearer_token_and_probes_stay_open(caplog):
    caplog.set_level(logging.WARNING, logger="server.security")
    with server(access_token=TOKEN) as srv:
        r = requests.get(srv.url + "/metrics", timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        for bad in ("Bearer nope", f"Basic {TOKEN}", TOKEN, "Bearer"):
            assert requests.get(srv.url + "/metrics", headers={"Authorization": bad}, timeout=5).status_code == 401
        r = requests.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.ok and "vita_active_sessions" in r.text
        assert requests.get(srv.url + "/healthz", timeout=5).ok
        assert requests.get(srv.url + "/", timeout=5).ok  # the page loads, then asks for the token
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    with server() as srv:  # no token set: open as before
        assert requests.get(srv.url + "/metrics", timeout=5).ok


def test_token_sources_and_options(tmp_path, monkeypatch):
    f = tmp_path / "token"
    f.write_text(f"{TOKEN}\n")
    env = {security.TOKEN_ENV: "from-env\n"}
    assert security.resolve_access_token(SecurityOptions(access_token="opt"), env) == "opt"
    assert security.resolve_access_token(SecurityOptions(access_token_file=str(f)), env) == TOKEN
    assert security.resolve_access_token(SecurityOptions(), env) == "from-env"
    assert security.resolve_access_token(SecurityOptions()) is None  # create_app never reads the environment
    (tmp_path / "empty").write_text("\n")
    for bad in ("empty", "missing"):
        with pytest.raises(ValueError):
            security.resolve_access_token(SecurityOptions(access_token_file=str(tmp_path / bad)))
    # the command line: env var folded in before the engine loads; a bad file stops the start
    monkeypatch.setenv(security.TOKEN_ENV, "from-env")
    assert with_access_token(parse_options([])).security.access_token == "from-env"
    assert main(["--access_token_file", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        parse_options(["--access_token", "a", "--access_token_file", str(f)])
    opts = parse_options(["--access_token", TOKEN, "--allowed_hosts", "a.example,b.example"])
    assert TOKEN not in repr(opts) and opts.security.allowed_hosts == "a.example,b.example"
    helptext = build_parser().format_help()
    assert all(flag in helptext for flag in ("--allowed_hosts", "--access_token", "--access_token_file"))
