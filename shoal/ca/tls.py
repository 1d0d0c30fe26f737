"""Mutual TLS 1.3 for the cluster port, and who is on the other end of a request.

server_context: the manager's TCP site. TLS 1.3 only; client certificates from the cluster CA
(required, or optional on the one port that also serves the join: see docs/security.md); no
session tickets, so no connection skips the certificate checks by resuming an old session.
client_context: agents and remote clients. The server must present a certificate from the
cluster CA whose name matches; agents dial with server_hostname=MANAGER_SERVER_NAME, which only
managers' certificates carry.
TLSSite: aiohttp's TCPSite, doing the handshake itself so that each refused one is logged with
the peer and the reason (asyncio logs them only in debug mode).

Python's ssl loads a certificate and key only from files: contexts built from objects write
them to a private temporary directory (0700, on /dev/shm when there is one) that is removed
before the function returns. Reloading a context (after a renewal) affects new connections
only; established ones, a session's WebSocket among them, carry on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from shoal.ca import pem
from shoal.ca.errors import CAError, CAStoreError, NoCertificate, PermissionDenied
from shoal.ca.identity import Identity
from shoal.ca.names import OPEN_PATHS
from shoal.ca.pem import CertSource, KeySource
from shoal.ca.trust import Trust

log = logging.getLogger("shoal.ca")

IDENTITY = web.RequestKey("shoal_identity", Identity)  # absent: local or anonymous
LOCAL = web.RequestKey("shoal_local", bool)  # True: came in on the unix socket


def _private_tmp() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def load_identity(ctx: ssl.SSLContext, cert: CertSource, key: KeySource) -> None:
    """Load (or replace, after a renewal) the certificate and key a context presents."""
    c, k = pem.load_cert(cert), pem.load_key(key)
    if k.public_key() != c.public_key():
        raise CAStoreError(f"the key given is not the key of certificate "
                           f"{c.subject.rfc4514_string()!r}")
    with tempfile.TemporaryDirectory(prefix="shoal-tls-", dir=_private_tmp()) as d:
        path = Path(d) / "identity.pem"
        pem.write_file(path, pem.key_pem(k) + pem.cert_pem(c), 0o600)
        ctx.load_cert_chain(path)


def _base(ctx: ssl.SSLContext, ca: CertSource) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=pem.cert_pem(pem.load_cert(ca, "CA certificate")).decode())
    return ctx


def server_context(ca: CertSource, cert: CertSource, key: KeySource, *,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """For web.TCPSite(runner, host, port, ssl_context=...).

    require_client_cert=False: a client may come without a certificate (the handshake
    still refuses one from another CA, expired, or not for client use); then
    `auth_middleware` refuses every request from it except those to OPEN_PATHS."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.num_tickets = 0
    load_identity(ctx, cert, key)
    return ctx


def client_context(ca: CertSource, cert: CertSource | None = None,
                   key: KeySource | None = None) -> ssl.SSLContext:
    """For aiohttp: session.get(url, ssl=ctx, server_hostname=MANAGER_SERVER_NAME), or
    aiohttp.TCPConnector(ssl=ctx). Without cert and key: an anonymous client that still
    verifies the server (the join request)."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca)  # CERT_REQUIRED, check_hostname
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise CAStoreError("client_context: give both a certificate and its key, or neither")
        load_identity(ctx, cert, key)
    return ctx


def unverified_context() -> ssl.SSLContext:
    """TLS 1.3 that checks nothing about the server: only for fetching the CA certificate,
    which is then accepted only if its digest matches the join token (fetch_and_pin)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def transport_identity(transport: object, trust: Trust) -> Identity:
    """The verified identity of the peer of an asyncio transport (server or client side)."""
    get = getattr(transport, "get_extra_info", None)
    ssl_obj = get("ssl_object") if get is not None else None
    if ssl_obj is None:
        raise NoCertificate("plaintext connection: the cluster port speaks mutual TLS only")
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        raise NoCertificate("the peer presented no certificate: calls other than the join "
                            "need a certificate from this cluster's CA")
    return trust.verify(der)


def peer_identity(request: web.BaseRequest, trust: Trust) -> Identity:
    """The verified identity (node id or user, role, cluster) behind an aiohttp request."""
    return transport_identity(request.transport, trust)


def _is_unix(request: web.BaseRequest) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str) -> web.Response:
    """{"message"} as Docker sends it: the Content-Type exactly "application/json", or the
    docker CLI prints the body raw instead of the message."""
    return web.Response(body=json.dumps({"message": message}).encode() + b"\n", status=status,
                        headers={"Content-Type": "application/json"})


def auth_middleware(trust: Trust, *, open_paths: Iterable[str] = OPEN_PATHS,
                    ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Authenticate every request, default deny.

    - unix socket: let through, request[LOCAL] = True (the socket's file mode guards it);
    - TLS with a certificate: verified (CA, cluster, revocation, dates) -> request[IDENTITY];
    - TLS without a certificate: only `open_paths` (the CA and the join), else 401;
    - plaintext TCP: 401 (a misconfigured site; the TLS port itself never gets this far).
    A refusal is a JSON {"message"} with the error's status, and is logged."""
    open_set = frozenset(open_paths)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if _is_unix(request):
                request[LOCAL] = True
            else:
                ssl_obj = request.transport.get_extra_info("ssl_object") if (
                    request.transport) else None
                anonymous = ssl_obj is not None and not ssl_obj.getpeercert(binary_form=True)
                if not (anonymous and request.path in open_set):
                    request[IDENTITY] = peer_identity(request, trust)
        except CAError as exc:
            log.warning("refused %s %s from %s: %s", request.method, request.path,
                        request.remote, exc)
            return json_error(exc.status, str(exc))
        return await handler(request)

    return authenticate


def authorize(request: web.Request, *roles: str) -> Identity | None:
    """Require the caller to hold one of `roles` (OU values); local callers always may.
    Returns the identity (None for local). Raises NoCertificate or PermissionDenied."""
    if request.get(LOCAL):
        return None
    ident = request.get(IDENTITY)
    if ident is None:
        raise NoCertificate(f"{request.method} {request.path} needs a client certificate")
    if ident.role not in roles:
        raise PermissionDenied(f"{ident} may not {request.method} {request.path}: "
                               f"that needs role {' or '.join(roles)}")
    return ident


# --- a TCP site that logs refused handshakes ---

HANDSHAKE_TIMEOUT = 10.0

_REASONS = {  # OpenSSL's words for the usual refusals -> what an operator should read
    "certificate has expired": "its certificate has expired",
    "certificate is not yet valid": "its certificate is not yet valid (clock skew?)",
    "unable to get local issuer certificate": "its certificate is from another CA",
    "self-signed certificate": "its certificate is self-signed, not from this cluster's CA",
    "self signed certificate": "its certificate is self-signed, not from this cluster's CA",
    "unsupported certificate purpose": "its certificate is not for TLS clients (a user's "
                                       "presented as a server, or the reverse)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "it presented no client certificate",
    "UNSUPPORTED_PROTOCOL": "it offered only TLS versions below 1.3",
    "NO_SHARED_CIPHER": "no shared cipher (TLS below 1.3?)",
    "HTTP_REQUEST": "it spoke plaintext HTTP to the TLS port",
    "WRONG_VERSION_NUMBER": "it did not speak TLS",
}


def describe_tls_error(exc: BaseException) -> str:
    """A TLS handshake failure in words: expired, other CA, no certificate, TLS 1.2 ..."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = str(exc.verify_message)
        return _REASONS.get(msg, f"its certificate was refused: {msg}")
    if isinstance(exc, ssl.SSLError):
        return _REASONS.get(str(exc.reason), f"TLS error: {exc.reason or exc}")
    if isinstance(exc, TimeoutError) or (
            isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)):
        return "no TLS handshake in time"  # asyncio says it with ConnectionAbortedError
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "it hung up during the handshake (does it trust this cluster's CA?)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _HandshakeFirst(asyncio.Protocol):
    """Takes a new TCP connection, does the TLS handshake with loop.start_tls and only then
    hands the connection to aiohttp: a refused handshake is logged here, with the peer's
    address and the reason, where asyncio would log it only in debug mode."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], ctx: ssl.SSLContext,
                 timeout: float, tasks: set[asyncio.Task[None]]) -> None:
        self._factory, self._ctx, self._timeout, self._tasks = factory, ctx, timeout, tasks
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.pause_reading()  # the ClientHello waits in the socket for start_tls
        self._task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._tasks.add(self._task)
        self._task.add_done_callback(self._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:  # before the upgrade only
        if self._task is not None:
            self._task.cancel()

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        app = self._factory()
        try:
            tls = await loop.start_tls(transport, app, self._ctx, server_side=True,
                                       ssl_handshake_timeout=self._timeout)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("refused a TLS connection from %s: %s", who, describe_tls_error(exc))
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        app.connection_made(tls)


class TLSSite(web.TCPSite):
    """web.TCPSite(runner, host, port, ssl_context=server_context(...)) that logs every
    refused handshake ("refused a TLS connection from 198.18.0.12:40112: its certificate has
    expired"). Same arguments as TCPSite; ssl_context is required. asyncio's loop only (the
    manager runs on it): on uvloop it refuses to start rather than lose handshakes."""

    def __init__(self, runner: web.BaseRunner, host: str | None = None, port: int | None = None,
                 *, ssl_context: ssl.SSLContext, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, **kwargs)
        self._handshake_timeout = handshake_timeout
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, asyncio.BaseEventLoop):
            # uvloop starts reading a new connection right after connection_made, so a
            # ClientHello that came with the connection reaches this protocol and is lost
            # before start_tls takes over: that handshake then times out.
            raise CAError(f"TLSSite needs asyncio's own event loop, not {type(loop).__module__}"
                          f".{type(loop).__name__}: use web.TCPSite(ssl_context=...) there")
        await web.BaseSite.start(self)  # registers the site with the runner
        server, ctx = self._runner.server, self._ssl_context
        assert server is not None and ctx is not None
        self._server = await loop.create_server(
            lambda: _HandshakeFirst(server, ctx, self._handshake_timeout, self._handshakes),
            self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        await super().stop()
