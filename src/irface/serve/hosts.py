"""Which `Host` a request may name: the defence against DNS rebinding.

A page on evil.example can make its name resolve to 127.0.0.1 after it has loaded; the visitor's
browser then sends that page's requests to this server with `Host: evil.example:PORT` and
`Origin: http://evil.example:PORT`, which agree with each other, so the same-origin check alone lets
them through. The name in `Host` is what tells them apart: a request is served only when it names the
address the server listens on, a loopback name when it listens on loopback, or a name the operator
allowed (`--allowed-host`). An IP address in `Host` involves no DNS, so it cannot be rebound: on a
wildcard address (0.0.0.0, ::) any address is accepted, names only when allowed.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Awaitable, Callable, Iterable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header without its port or IPv6 brackets, lower case: `[::1]:80` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header.rstrip(".")


class AllowedHosts:
    """The names a request's `Host` may carry, for a server listening on `bind`."""

    def __init__(self, bind: str = "127.0.0.1", extra: Iterable[str] = ()):
        self.bind = host_name(bind) if bind not in WILDCARD_HOSTS else bind
        self.any_address = bind in WILDCARD_HOSTS
        names = {host_name(h) for h in extra if h.strip()}
        if not self.any_address:
            names.add(self.bind)
        if is_loopback(self.bind):
            names.update(LOOPBACK_NAMES)
        self.names = frozenset(names)

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return name in self.names or (self.any_address and _is_ip(name))

    def describe(self) -> str:
        shown = sorted(self.names) + (["any IP address"] if self.any_address else [])
        return ", ".join(shown) or "nothing"


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


async def send_json_error(send: Callable[[dict], Awaitable[None]], status: int, detail: str) -> None:
    """A middleware's refusal, as FastAPI words its errors: `{"detail": ...}`."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: a request whose Host names no allowed host is answered 421, one JSON line."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host")
        # No Host at all (HTTP/1.0): no browser sends that, so there is nothing to rebind.
        if raw is None or self.allowed.allows(raw.decode("latin-1")):
            return await self.app(scope, receive, send)
        header = raw.decode("latin-1")

        # 421 Misdirected Request: the request reached a server that does not serve that name.
        await send_json_error(send, 421, f"requests for host {header[:100]!r} are refused: this server answers to "
                                         f"{self.allowed.describe()} (--allowed-host adds names)")
