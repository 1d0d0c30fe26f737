"""The TLS side: route a connection by the SNI of its ClientHello, without terminating TLS.

The client's first bytes are held until the ClientHello is complete (sni.py parses it), then a
backend for that name is connected and gets every byte held, the ClientHello included; from
there the two connections are a plain pipe (tunnel.py), so the client's TLS session is with the
backend and the certificate it sees is the backend's. No route for the name, no name, or not
TLS at all: a fatal alert, then close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shoal.mesh import sni
from shoal.mesh.errors import MeshError
from shoal.mesh.routes import Addr, lookup
from shoal.mesh.tunnel import Pipe

if TYPE_CHECKING:
    from shoal.mesh.server import MeshServer

_HELLO, _CONNECT, _PIPE = range(3)


class TlsClient(Pipe):
    __slots__ = ("server", "state", "buf", "deadline", "task")

    def __init__(self, server: MeshServer) -> None:
        super().__init__()
        self.server = server
        self.state = _HELLO
        self.buf = b""
        self.deadline = 0.0
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.deadline = self.server.now + self.server.config.header_timeout
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _PIPE:
            self.peer.transport.write(data)  # type: ignore[union-attr]
            return
        self.buf += data
        if self.state != _HELLO:
            return
        hello = sni.parse_client_hello(self.buf)
        if hello.status == sni.MORE:
            return
        if hello.status == sni.INVALID:
            self._refuse(sni.ALERT_DECODE_ERROR)
            return
        route = None if hello.sni is None else lookup(self.server.table.https, hello.sni)
        if route is None:
            self._refuse(sni.ALERT_UNRECOGNIZED_NAME)
            return
        self.deadline = 0.0
        self.state = _CONNECT
        self.transport.pause_reading()
        self.task = self.server.loop.create_task(self._connect(route.order(route.pick())))

    async def _connect(self, order: list[Addr]) -> None:
        try:
            backend = await self.server.pool.connect(order, lambda _addr: Pipe())
        except MeshError:
            self.task = None
            self.close()  # no alert: the client may already wait for a ServerHello
            return
        self.task = None
        assert isinstance(backend, Pipe)
        if self.closed:
            backend.close()
            return
        self.link(backend)
        self.state = _PIPE
        data, self.buf = self.buf, b""
        backend.transport.write(data)
        self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.state != _PIPE:
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        if self.task is not None:
            self.task.cancel()
            self.task = None
        super().connection_lost(exc)

    def timeout(self) -> None:
        self.close()

    def _refuse(self, alert: bytes) -> None:
        self.transport.write(alert)
        self.close()
