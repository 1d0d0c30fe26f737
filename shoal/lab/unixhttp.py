"""Plain HTTP over a unix socket, enough to ask the manager's Docker API a question."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get_json(socket_path: str, path: str, timeout: float = 5.0) -> Any:
    """GET `path`; raises OSError when nothing answers, ValueError on a non-200 or bad JSON."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer on {socket_path}: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
    return json.loads(body)
