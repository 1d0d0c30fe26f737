"""The HTTP side: one protocol object per client connection, one per backend connection.

A client connection reads a request head, picks a backend for its Host, and forwards the
head and then the body bytes as they come; the backend connection forwards the response the
same way and hands itself back to the pool when the response ends. Requests on one client
connection are served one after the other; pipelined bytes wait (bounded) until the response
before them has ended.

Flow control is the transports' own: when one side's write buffer passes its high-water mark
the other side stops reading (`pause_writing` -> `pause_reading`), so a 50 MB body moves through
in buffer-sized pieces and the mesh never holds it. A 101 answer to an upgrade request turns
both connections into a byte pipe until either closes.

The parsing is in http1.py and framing.py (no I/O); this file only moves bytes and tracks state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from shoal.mesh import http1
from shoal.mesh.errors import HttpError, MeshError
from shoal.mesh.framing import ChunkedBody, LengthBody
from shoal.mesh.http1 import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UPGRADE,
    Request,
)
from shoal.mesh.routes import Addr, lookup

if TYPE_CHECKING:
    from shoal.mesh.server import MeshServer

WRITE_HIGH = 256 * 1024  # per-transport write buffer before the other side pauses
BUFFER_LIMIT = 256 * 1024  # client bytes held while a backend connects or a response runs

# Client states
_HEAD, _CONNECT, _BODY, _WAIT, _TUNNEL, _CLOSED = range(6)
# Why the client transport is not being read (bits)
_P_BACKEND = 1  # the backend's write buffer is full
_P_BUFFER = 2  # too many bytes held for later

# Backend states
_IDLE, _R_HEAD, _R_BODY, _R_TUNNEL, _R_CLOSED = range(5)


class HttpClient(asyncio.Protocol):
    __slots__ = ("server", "transport", "ip", "state", "buf", "req", "body", "backend",
                 "deadline", "paused", "write_paused", "task")

    def __init__(self, server: MeshServer) -> None:
        self.server = server
        self.state = _HEAD
        self.buf = b""
        self.req: Request | None = None
        self.body: LengthBody | ChunkedBody | None = None
        self.backend: Backend | None = None
        self.deadline = 0.0
        self.paused = 0
        self.write_paused = False
        self.task: asyncio.Task[None] | None = None
        self.ip = b"unknown"

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        if peer:
            self.ip = peer[0].encode("ascii")
        self.deadline = self.server.now + self.server.config.header_timeout
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._body(data, 0)
        elif state == _HEAD:
            self._head(data)
        elif state == _TUNNEL:
            self.backend.transport.write(data)  # type: ignore[union-attr]
        elif state != _CLOSED:  # connecting or waiting for a response: hold, bounded
            self.buf += data
            if len(self.buf) > BUFFER_LIMIT:
                self._pause(_P_BUFFER)

    def eof_received(self) -> bool | None:
        if self.state in (_CONNECT, _WAIT) and self.req is not None:
            # The request is complete and the client only stopped sending: answer, then close.
            self.req.keep_alive = False
            return True
        if self.state == _TUNNEL and self.backend is not None:
            self.backend.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.server.conns.discard(self)
        if self.task is not None:
            self.task.cancel()
            self.task = None
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.client = None
            backend.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.backend is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.backend is not None:
            self.backend.transport.resume_reading()

    def timeout(self) -> None:
        """Called by the server's sweep when `deadline` passed: no (complete) request head."""
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def _head(self, data: bytes) -> None:
        server = self.server
        while True:
            if self.buf:
                data = self.buf + data
                self.buf = b""
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if data[:1] in (b"\r", b"\n"):
                    data = data.lstrip(b"\r\n")  # blank lines between requests (RFC 9112 2.2)
                if len(data) > server.config.max_head:
                    self._reply(431, "request head too large", close=True)
                    return
                if data:
                    limit = server.now + server.config.header_timeout
                    if not self.deadline or limit < self.deadline:
                        self.deadline = limit
                self.buf = data
                return
            if data[0] == 13 or data[0] == 10:
                stripped = data.lstrip(b"\r\n")
                if len(stripped) != len(data):
                    data = stripped
                    continue
            if end > server.config.max_head:
                self._reply(431, "request head too large", close=True)
                return
            try:
                req = http1.parse_request(data[:end], self.ip)
            except HttpError as exc:
                self._reply(exc.status, str(exc), close=True)
                return
            self.deadline = 0.0
            start = end + 4
            route = server.table.http.get(req.host) or lookup(server.table.http, req.host)
            if route is None:
                close = not req.keep_alive or req.body != BODY_NONE
                self._reply(503, f"no service for host {req.host}", close=close)
                if close:
                    return
                data = data[start:]
                if not data:
                    self.deadline = server.now + server.config.idle_timeout
                    return
                self.deadline = server.now + server.config.header_timeout
                continue
            self.req = req
            if req.body == BODY_NONE:
                self.body = None
            elif req.body == BODY_CHUNKED:
                self.body = ChunkedBody(400)
            else:
                self.body = LengthBody(req.length)
            first = route.pick()
            addr = route.backends[first]
            backend = server.pool.acquire(addr)
            while backend is not None and backend.transport.is_closing():  # type: ignore
                backend = server.pool.acquire(addr)
            if backend is not None:
                self._attach(backend)  # type: ignore[arg-type]
                self._send(data, start)
            else:
                self.state = _CONNECT
                self.buf = data[start:]
                self.task = server.loop.create_task(self._connect(route.order(first)))
            return

    def _send(self, data: bytes, start: int) -> None:
        """Send the request head, with the body bytes that came along, to the backend."""
        backend = self.backend
        assert backend is not None and self.req is not None
        body = self.body
        if body is None:
            backend.transport.write(self.req.head)
            end = start
        else:
            try:
                end = body.feed(data, start)
            except HttpError as exc:
                self._reply(exc.status, str(exc), close=True)
                return
            chunk = data[start:end]
            if len(chunk) < 65536:
                backend.transport.write(self.req.head + chunk)
            else:
                backend.transport.write(self.req.head)
                backend.transport.write(chunk)
            if not body.done:
                self.state = _BODY
                return
        self.state = _WAIT
        if end < len(data):  # pipelined: the next request waits for this response
            self.buf = data[end:]
            if len(self.buf) > BUFFER_LIMIT:
                self._pause(_P_BUFFER)

    def _body(self, data: bytes, start: int) -> None:
        body = self.body
        assert body is not None and self.backend is not None
        try:
            end = body.feed(data, start)
        except HttpError as exc:
            self._reply(exc.status, str(exc), close=True)
            return
        if start == 0 and end == len(data):
            self.backend.transport.write(data)
        else:
            self.backend.transport.write(data[start:end])
        if body.done:
            self.state = _WAIT
            if end < len(data):
                self.buf = data[end:]
                if len(self.buf) > BUFFER_LIMIT:
                    self._pause(_P_BUFFER)

    async def _connect(self, order: list[Addr]) -> None:
        server = self.server
        try:
            backend = await server.pool.connect(order, lambda addr: Backend(server, addr))
        except MeshError as exc:
            self.task = None
            if self.state == _CONNECT:
                self._reply(502, str(exc), close=True)
            return
        self.task = None
        assert isinstance(backend, Backend)
        if self.state != _CONNECT:  # the client left meanwhile
            backend.close()
            return
        self._attach(backend)
        data, self.buf = self.buf, b""
        self._resume(_P_BUFFER)
        self._send(data, 0)

    def _attach(self, backend: Backend) -> None:
        self.backend = backend
        backend.client = self
        backend.state = _R_HEAD
        backend.got = False
        backend.resp = None
        if self.write_paused:
            backend.transport.pause_reading()

    # -- called by the backend --------------------------------------------------------------

    def response_done(self, reusable: bool, close_client: bool) -> None:
        backend = self.backend
        self.backend = None
        if backend is not None:
            backend.client = None
            if self.write_paused:
                backend.transport.resume_reading()
            if self.state != _WAIT:  # answered before the request body ended (e.g. 413)
                reusable, close_client = False, True
            if reusable:
                backend.state = _IDLE
                self.server.pool.release(backend)
            else:
                backend.close()
        self._resume(_P_BACKEND)
        self.req = None
        if close_client or self.state == _CLOSED:
            self.close()
            return
        self.state = _HEAD
        server = self.server
        if self.buf:
            data, self.buf = self.buf, b""
            self._resume(_P_BUFFER)
            self.deadline = server.now + server.config.header_timeout
            self._head(data)
        else:
            self.deadline = server.now + server.config.idle_timeout

    def retry(self) -> None:
        """A pooled backend connection closed before answering: the backend closed it while
        idle (keep-alive timeout) just as it was reused. Safe to send again only without a
        body, since the body bytes are gone."""
        self.backend = None
        self._resume(_P_BACKEND)
        req = self.req
        assert req is not None
        route = lookup(self.server.table.http, req.host)
        if route is None or req.body != BODY_NONE:
            self._reply(502, "backend closed the connection", close=True)
            return
        self.state = _CONNECT
        self.task = self.server.loop.create_task(self._connect(route.order(route.pick())))

    def backend_failed(self, answered: bool) -> None:
        self.backend = None
        if answered:
            self.close()  # part of a response went out: only closing tells the client
        else:
            self._reply(502, "backend closed the connection", close=True)

    def start_tunnel(self) -> None:
        self.state = _TUNNEL
        self.deadline = 0.0
        data, self.buf = self.buf, b""
        self._resume(_P_BUFFER)
        if data and self.backend is not None:
            self.backend.transport.write(data)

    # -- helpers ----------------------------------------------------------------------------

    def _reply(self, status: int, text: str, close: bool) -> None:
        if self.state == _CLOSED:
            return
        if self.backend is not None and self.state != _HEAD:
            # Mid-request failure: the backend connection's framing is unknown now.
            backend, self.backend = self.backend, None
            backend.client = None
            backend.close()
        self.transport.write(http1.error_response(status, text, close))
        if close:
            self.close()

    def close(self) -> None:
        if self.state != _CLOSED:
            self.state = _CLOSED
            self.transport.close()  # flushes what is buffered first

    def _pause(self, reason: int) -> None:
        if not self.paused and self.state != _CLOSED:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.state != _CLOSED:
                self.transport.resume_reading()


class Backend(asyncio.Protocol):
    __slots__ = ("server", "addr", "transport", "client", "state", "buf", "resp", "body",
                 "got", "idle_since")

    def __init__(self, server: MeshServer, addr: Addr) -> None:
        self.server = server
        self.addr = addr
        self.client: HttpClient | None = None
        self.state = _IDLE
        self.buf = b""
        self.resp: http1.Response | None = None
        self.body: LengthBody | ChunkedBody | None = None
        self.got = False  # any response byte arrived for the current request
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _R_BODY:
            self._body(data, 0)
        elif state == _R_HEAD:
            self._head(data)
        elif state == _R_TUNNEL:
            self.client.transport.write(data)  # type: ignore[union-attr]
        else:  # bytes from an idle backend: its framing cannot be trusted any more
            self.server.pool.discard(self)
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _R_CLOSED
        client = self.client
        self.client = None
        if state == _IDLE:
            self.server.pool.discard(self)
        if client is None:
            return
        if state == _R_BODY and self.resp is not None and self.resp.body == BODY_CLOSE:
            client.response_done(False, True)  # the close is the end of this body
        elif state == _R_TUNNEL:
            client.close()
        elif state == _R_HEAD and not self.got and self.idle_since:
            client.retry()
        else:
            client.backend_failed(self.got)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client._pause(_P_BACKEND)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client._resume(_P_BACKEND)

    def close(self) -> None:
        self.state = _R_CLOSED
        self.client = None
        self.transport.close()

    def _head(self, data: bytes) -> None:
        self.got = True
        client = self.client
        assert client is not None and client.req is not None
        while True:
            if self.buf:
                data = self.buf + data
                self.buf = b""
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > self.server.config.max_head:
                    client.backend_failed(False)
                    self.close()
                    return
                self.buf = data
                return
            try:
                resp = http1.parse_response(data[:end], client.req)
            except HttpError:
                client.backend_failed(False)
                self.close()
                return
            start = end + 4
            if resp.interim:
                if client.req.version == 11:
                    client.transport.write(data[:start])
                data = data[start:]
                if not data:
                    return
                continue
            break
        self.resp = resp
        if resp.body == BODY_UPGRADE:
            self.state = _R_TUNNEL
            client.transport.write(data)
            client.start_tunnel()
            return
        head = resp.head
        if resp.body == BODY_NONE:
            client.transport.write(data[:start] if head is None else head)
            self._done(resp.reusable and start == len(data), resp.close_client)
            return
        body: LengthBody | ChunkedBody | None
        if resp.body == BODY_LENGTH and len(data) - start >= resp.length:
            # The whole body came with the head (the common small response): no framer.
            end = start + resp.length
            client.transport.write(data if end == len(data) and head is None else
                                   (head or data[:start]) + data[start:end])
            self._done(resp.reusable and end == len(data), resp.close_client)
            return
        if resp.body == BODY_CLOSE:
            body, end = None, len(data)
        else:
            body = ChunkedBody(502) if resp.body == BODY_CHUNKED else LengthBody(resp.length)
            try:
                end = body.feed(data, start)
            except HttpError:
                client.backend_failed(True)
                self.close()
                return
        if head is None:
            client.transport.write(data if end == len(data) else data[:end])
        else:
            client.transport.write(head + data[start:end])
        if body is not None and body.done:
            self._done(resp.reusable and end == len(data), resp.close_client)
        else:
            self.body = body
            self.state = _R_BODY

    def _body(self, data: bytes, start: int) -> None:
        client = self.client
        assert client is not None
        body = self.body
        if body is None:  # until close
            client.transport.write(data)
            return
        try:
            end = body.feed(data, start)
        except HttpError:
            client.backend_failed(True)
            self.close()
            return
        client.transport.write(data if end == len(data) else data[:end])
        if body.done:
            assert self.resp is not None
            self._done(self.resp.reusable and end == len(data), self.resp.close_client)

    def _done(self, reusable: bool, close_client: bool) -> None:
        self.body = None
        self.resp = None
        self.state = _IDLE
        client = self.client
        if client is not None:
            client.response_done(reusable, close_client)
