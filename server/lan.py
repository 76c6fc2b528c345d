"""This server's address for other devices on the local network: what presenter mode's QR code shows.

A page opened as ``https://localhost:8081/`` cannot know the machine's LAN address (browsers hide it), so
the page asks ``GET /join``. Only addresses the server really listens on are offered: none when it listens
on a loopback address (phones could not connect; the answer says how to fix that).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_PROBE = ("192.0.2.1", 9)  # TEST-NET-1: a UDP "connect" picks the outgoing interface and sends nothing


def _primary_ipv4() -> str | None:
    """The address of the interface that holds the default route, or ``None`` offline."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(_PROBE)
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def lan_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this machine, the default route's first."""
    found: list[str] = []
    candidates = [_primary_ipv4()]
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    for a in candidates:
        if a and a not in found and not ipaddress.ip_address(a).is_loopback:
            found.append(a)
    return found


def join_info(listen_ip: str, scheme: str, port: int | None, addresses: list[str] | None = None) -> dict[str, Any]:
    """``{urls, lan, hint}``: the page's URLs on the LAN for a server listening on ``listen_ip``.

    ``lan`` is false when the server listens on loopback only; ``hint`` then says what the operator
    must change. ``addresses`` overrides :func:`lan_addresses` (tests)."""
    wildcard = listen_ip in ("0.0.0.0", "::", "")
    try:
        loopback = not wildcard and ipaddress.ip_address(listen_ip).is_loopback
    except ValueError:  # a host name: offer it as it is
        loopback = listen_ip == "localhost"
    if loopback:
        return {"urls": [], "lan": False,
                "hint": "The server listens on this computer only; start it with --ip 0.0.0.0 so phones can join."}
    hosts = (lan_addresses() if addresses is None else addresses) if wildcard else [listen_ip]
    suffix = f":{port}" if port else ""
    urls = [f"{scheme}://{'[' + h + ']' if ':' in h else h}{suffix}/" for h in hosts]
    return {"urls": urls, "lan": bool(urls),
            "hint": None if urls else "No network address found: is this computer on a network?"}
