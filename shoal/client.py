"""A small synchronous client for the manager's Docker API (unix socket or the cluster port).

Used by the shoal CLI and the lab. Non-2xx answers become ShoalError subclasses carrying the
server's message, so the CLI prints exactly what the API said.

Over TCP it speaks mutual TLS with the certificates the docker CLI reads:
$DOCKER_CERT_PATH/{ca.pem,cert.pem,key.pem} (what `shoal user create --out DIR` writes).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from typing import Any
from urllib.parse import quote, urlencode

from shoal.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    ShoalError,
    Unavailable,
)

DEFAULT_HOST = "unix:///run/shoal/shoal/docker.sock"
API_PREFIX = "/v1.47"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


_ERRORS = {400: InvalidArgument, 401: Forbidden, 403: Forbidden,
           404: NotFound, 409: Conflict}


def tls_context(cert_path: str) -> ssl.SSLContext:
    """Mutual TLS 1.3 with a user's (or node's) certificate from the cluster CA."""
    ctx = ssl.create_default_context(cafile=os.path.join(cert_path, "ca.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(os.path.join(cert_path, "cert.pem"),
                            os.path.join(cert_path, "key.pem"))
    except OSError as exc:
        raise InvalidArgument(f"no client certificate in {cert_path}: {exc} (make one with "
                              "`shoal user create NAME --role R --out DIR`)") from exc
    return ctx


class Client:
    def __init__(self, host: str | None = None, timeout: float = 30.0,
                 cert_path: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.timeout = timeout
        self.cert_path = cert_path or os.environ.get("DOCKER_CERT_PATH")

    def _connection(self) -> http.client.HTTPConnection:
        if self.host.startswith("unix://"):
            return UnixHTTPConnection(self.host[len("unix://"):], self.timeout)
        if self.host.startswith(("tcp://", "https://")):
            hostport = self.host.split("://", 1)[1].rstrip("/")
            if not self.cert_path:
                raise InvalidArgument(f"{self.host} speaks mutual TLS only: set "
                                      "DOCKER_CERT_PATH to a directory with ca.pem, cert.pem "
                                      "and key.pem (`shoal user create`)")
            return http.client.HTTPSConnection(hostport, timeout=self.timeout,
                                               context=tls_context(self.cert_path))
        raise InvalidArgument(f"unsupported host {self.host!r}: use unix:///path or tcp://h:p")

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        # shoal's own paths (/shoal/v1/...) carry no Docker API version
        url = path if path.startswith("/shoal/") else API_PREFIX + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        conn = self._connection()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, url, body=json.dumps(body) if body is not None else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"cannot reach the shoal manager at {self.host}: {exc} "
                              "(is a lab up? `shoal lab up`)") from exc
        finally:
            conn.close()
        if resp.status >= 300:
            try:
                message = json.loads(data)["message"]
            except (ValueError, KeyError, TypeError):
                message = data.decode(errors="replace").strip() or resp.reason
            raise _ERRORS.get(resp.status, ShoalError)(message)
        if raw:
            return data
        return json.loads(data) if data.strip() else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def find(self, kind: str, ref: str) -> Any:
        return self.get(f"/{kind}s/{quote(ref, safe='')}")
