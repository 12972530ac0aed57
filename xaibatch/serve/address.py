"""Where ``xaibatch serve`` listens: the host and port are tried before the model loads (seconds), so a port in use
or a host that is no address of this machine answers at once, in one line. Imports nothing heavy."""

from __future__ import annotations

import errno
import socket

from ..errors import UsageError


def listen_error(host: str, port: int | None, e: OSError) -> UsageError:
    """The one line for an address that cannot be listened on."""
    if isinstance(e, socket.gaierror):
        return UsageError(f"--host {host}: no such host ({e.strerror or e})")
    if e.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"--host {host}: not an address of this machine")
    return UsageError(f"cannot listen on {host}:{port} (in use?); pick another with --port")


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once (as the server will: SO_REUSEADDR) and let it go; UsageError when that fails."""
    if ":" in host:  # Gradio writes http://::1:7860/ and fails on it once its server runs (an internal error)
        raise UsageError(f"--host {host}: Gradio cannot serve on an IPv6 address; use 127.0.0.1 or an IPv4 address")
    try:
        # IPv4, as uvicorn binds a host without ":" (localhost may resolve to ::1 first where IPv6 is off)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        raise listen_error(host, port, e) from None
