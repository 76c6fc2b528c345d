"""HTTP hardening: the Host allow-list, security headers on every response, and the optional access token.

Everything here works on the WSGI environ, so it also covers what Flask never sees: the Engine.IO handshake
(``/socket.io/``) is answered by python-engineio's middleware before Flask routes anything. No Flask import
at module level: ``server.cli`` resolves the token before the engine (and the web stack) is loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from hmac import compare_digest
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.options import SecurityOptions, ServerOptions
from server.tls import certificate_names, is_ip

log = logging.getLogger(__name__)

TOKEN_ENV = "VITA_ACCESS_TOKEN"
MIN_TOKEN_CHARS = 16  # shorter tokens could be guessed by trying connections
PROTECTED_PATHS = ("/metrics",)  # HTTP paths that need the token (when set); /healthz, /readyz stay open
EXTENSION = "vita_duplex.security"

# script-src 'self' only: no inline script, no eval. 'self' covers same-host ws:/wss: in current browsers;
# the request's own ws(s)://host is added per response for older WebKit, which did not match them.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'{ws}; worker-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(self), microphone=(self), geolocation=(), payment=(), usb=()"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")


def resolve_access_token(sec: SecurityOptions, env: Mapping[str, str] | None = None) -> str | None:
    """The access token: ``--access_token``, else the first line of ``--access_token_file``, else
    ``env[VITA_ACCESS_TOKEN]`` (only when ``env`` is given: the command line passes ``os.environ``).
    Raises ValueError when the file cannot be read or is empty."""
    if sec.access_token:
        return sec.access_token
    if sec.access_token_file:
        path = Path(sec.access_token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ValueError(f"--access_token_file {path}: {exc.strerror or exc}") from exc
        if not lines or not lines[0].strip():
            raise ValueError(f"--access_token_file {path} is empty")
        return lines[0].strip()
    return (env or {}).get(TOKEN_ENV, "").strip() or None  # a Secret written with a newline still matches


def split_host(host: str) -> str | None:
    """The name part of a Host header (port and IPv6 brackets removed, lower case), None when malformed."""
    m = _HOST_RE.match(host.strip())
    if not m:
        return None
    return m.group(1).strip("[]").rstrip(".").lower() or None


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


@dataclass(frozen=True)
class SecurityPolicy:
    """What a running server accepts: which Host names, and which token (if any)."""

    hosts: frozenset[str]  # exact names; a leading "." entry matches that domain and its subdomains
    any_host: bool
    token: str | None
    extra_hosts: frozenset[str]  # the operator's --allowed_hosts (trusted as page origins too)

    @classmethod
    def from_options(cls, options: ServerOptions) -> SecurityPolicy:
        """The policy for ``options``: default names (:func:`server.tls.certificate_names` of ``--ip``:
        localhost, loopbacks, the listen address, this machine's names) plus ``--allowed_hosts``."""
        entries = [h.strip() for h in options.security.allowed_hosts.split(",") if h.strip()]
        # "name:port" and "[v6]" are accepted as written; the port plays no part (Hosts are matched by name)
        extra = {h.lower().rstrip(".") if h.startswith(".") else (split_host(h) or h.lower()) for h in entries}
        names = {n.lower() for n in certificate_names(options.ip)}
        token = resolve_access_token(options.security)
        return cls(frozenset(names | extra - {"*"}), "*" in extra, token, frozenset(extra - {"*"}))

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this Host header may be served.

        IP literals always pass: DNS rebinding needs a name the attacker controls, and a browser only sends
        an IP as Host when the page itself was opened by that IP (this also covers NAT, Docker port maps
        and probes that use the pod address). A missing Host (HTTP/1.0 tools) passes: browsers always
        send one."""
        if self.any_host or host is None:
            return True
        name = split_host(host)
        if name is None:
            return False
        if name in self.hosts or is_ip(name):
            return True
        return any(h.startswith(".") and (name == h[1:] or name.endswith(h)) for h in self.hosts)

    def origin_allowed(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """The Socket.IO Origin check (``cors_allowed_origins``): same origin as the request (its Host, or
        the proxy's X-Forwarded-Host/-Proto), or a host named in --allowed_hosts. So a page from another
        site, or from another port of an allowed host, cannot open a socket with the user's browser."""
        if not origin:
            return True  # not a browser: no cross-site request to stop
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        own = {f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}".lower()}
        if "HTTP_X_FORWARDED_HOST" in environ or "HTTP_X_FORWARDED_PROTO" in environ:
            scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http"))
            fhost = environ.get("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST", ""))
            own.add(f"{scheme.split(',')[0].strip()}://{fhost.split(',')[0].strip()}".lower())
        if origin.rstrip("/").lower() in own:
            return True
        name = parts.hostname.rstrip(".").lower()
        ok = name in self.extra_hosts or any(
            h.startswith(".") and (name == h[1:] or name.endswith(h)) for h in self.extra_hosts
        )
        if not ok:
            log.warning("refused a Socket.IO handshake from origin %.80r (not this server)", origin)
        return ok

    def token_ok(self, given: Any) -> bool:
        """Whether ``given`` is the access token (always true when none is set); constant-time compare."""
        if self.token is None:
            return True
        if not isinstance(given, str):
            return False
        return compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def socket_auth_ok(self, auth: Any, peer: str | None) -> bool:
        """Check a Socket.IO connect's auth payload ``{"token": ...}``; logs one line (never the token)."""
        given = auth.get("token") if isinstance(auth, dict) else None
        if self.token_ok(given):
            return True
        log.warning("refused a Socket.IO connection from %s: access token %s", peer, "wrong" if given else "missing")
        return False

    def headers(self, environ: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The security headers for a response to ``environ``."""
        host = environ.get("HTTP_HOST", "")
        https = environ.get("wsgi.url_scheme") == "https"
        ws = ""
        if host and _HOST_RE.match(host) and self.host_allowed(host):  # only a well-formed, allowed Host
            ws = f" {'wss' if https else 'ws'}://{host}"
        out = [("Content-Security-Policy", CSP.format(ws=ws)), *STATIC_HEADERS]
        name = split_host(host) if host else None
        # HSTS only over TLS, and not for localhost: it pins the whole host (every port) to HTTPS, which
        # would break other plain-HTTP development servers on this machine.
        if https and not (name and _is_localhost(name)):
            out.append(HSTS)
        return out


class SecurityMiddleware:
    """WSGI middleware around the whole app (Flask and the Socket.IO endpoint): refuses foreign Hosts,
    asks for the token on protected paths, and adds the security headers to every response."""

    def __init__(self, app: Callable[..., Iterable[bytes]], policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        policy = self.policy
        peer = environ.get("REMOTE_ADDR")
        host = environ.get("HTTP_HOST")
        if not policy.host_allowed(host):
            log.warning("refused a request from %s for Host %.80r (not in the allow-list; see --allowed_hosts)",
                        peer, host)
            return self._reply(environ, start_response, "400 Bad Request",
                               "Host not allowed (the server's --allowed_hosts does not list it)\n")
        if policy.token is not None and environ.get("PATH_INFO", "") in PROTECTED_PATHS:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not policy.token_ok(given.strip()):
                log.warning("refused %s from %s: access token %s", environ.get("PATH_INFO"), peer,
                            "wrong" if auth else "missing")
                return self._reply(environ, start_response, "401 Unauthorized",
                                   "access token required (Authorization: Bearer <token>)\n",
                                   [("WWW-Authenticate", 'Bearer realm="vita-duplex"')])

        extra = policy.headers(environ)

        def secured_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {k.lower() for k, _ in headers}
            headers = [*headers, *((k, v) for k, v in extra if k.lower() not in present)]
            return start_response(status, headers, exc_info)

        return self.app(environ, secured_start_response)

    def _reply(self, environ: dict[str, Any], start_response: Callable[..., Any], status: str, body: str,
               headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
                                *(headers or []), *self.policy.headers(environ)])
        return [data]


def install(app: Any, policy: SecurityPolicy) -> None:
    """Wrap ``app.wsgi_app`` (call it after Flask-SocketIO wrapped it, so the socket endpoint is covered)."""
    app.wsgi_app = SecurityMiddleware(app.wsgi_app, policy)
    app.extensions[EXTENSION] = policy
    if policy.token is not None and len(policy.token) < MIN_TOKEN_CHARS:
        log.warning("the access token is shorter than %d characters: easy to guess", MIN_TOKEN_CHARS)
    if policy.any_host:
        log.warning("--allowed_hosts '*': any Host header is served (only behind a proxy that checks it)")


def policy_of(app: Any) -> SecurityPolicy:
    """The :class:`SecurityPolicy` :func:`install` put on ``app``."""
    return app.extensions[EXTENSION]
