"""Container health check (Docker HEALTHCHECK): exit 0 when the server's ``GET /healthz`` answers 200.

The port and whether TLS is on come from the server's own command line (``/proc/1/cmdline``: the server
is PID 1, or the child of an init such as tini whose command line carries the same arguments), so
``--port`` or ``--no-tls`` given to ``docker run IMAGE ...`` need no second setting here. The certificate
is not verified: the request goes over loopback, and the default certificate is self-signed. Standard
library only: the image has no curl.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8081


def health_url(argv: list[str]) -> str:
    """The /healthz URL on loopback for a server started with ``argv`` (launch.py's options)."""
    port, tls = DEFAULT_PORT, True
    for i, arg in enumerate(argv):
        if arg in ("--no_tls", "--no-tls"):
            tls = False
        elif arg == "--port" and i + 1 < len(argv):
            port = int(argv[i + 1])
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"


def healthy(url: str, timeout: float = 4.0) -> bool:
    """Whether ``url`` answers 200 (503, refused connections and timeouts are all unhealthy)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status == 200
    except (OSError, ValueError):  # URLError and HTTPError (503) are OSErrors
        return False


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    url = health_url(argv)
    ok = healthy(url)
    print(f"{url}: {'ok' if ok else 'unhealthy'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
