"""What ``xaibatch serve`` answers only to its own pages: requests through a name that is not the address it was
asked to listen on (DNS rebinding: a web page whose name resolves to 127.0.0.1 reads the report and flags images)
and requests that change something sent by a page of another origin (an upload, an Explain, a Flag). Gradio's
CORS rules stop another origin from reading the answers, not from sending a form (a multipart upload needs no
preflight). Pure ASGI, no Gradio: the app hands it to FastAPI as a middleware."""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """The name of a Host header's ``name[:port]`` (``[::1]:7860`` -> ``::1``), lower case."""
    try:
        return (urlsplit(f"//{authority}").hostname or "").lower()
    except ValueError:  # a malformed port or bracket
        return ""


class RequestGuard:
    """403 for a request whose Host is not a name of the loopback address the server listens on (only when it
    listens on one: on another address its names are not known here), and for a request that is not GET, HEAD or
    OPTIONS whose Origin names another host than the one the browser asked (its Host)."""

    def __init__(self, app: Callable[..., Awaitable[Any]], host: str, allow: tuple[str, ...] = ()) -> None:
        self.app = app
        extra = {host.lower(), *(host_name(a) or a.lower() for a in allow)}  # --allow-host: a proxy's name
        self.names = (LOOPBACK_NAMES | extra) if is_loopback(host) else None

    def refusal(self, method: str, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.names is not None and host_name(host) not in self.names:
            return "this server answers only to 127.0.0.1, localhost and the names of --allow-host"
        origin = headers.get(b"origin")
        if method not in SAFE_METHODS and origin is not None:
            o = urlsplit(origin.decode("latin-1"))  # by name, not port: nginx's $host drops the port a page has
            if o.scheme not in ("http", "https") or host_name(o.netloc) != host_name(host):
                return "a request from a page of another site"
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            why = self.refusal(scope.get("method", "GET").upper(), headers)
            if why is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = f"xaibatch serve: refused: {why}\n".encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"%d" % len(body)),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
