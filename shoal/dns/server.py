"""The resolver's sockets: a UDP and a TCP socket on 127.0.0.11:53 inside every task namespace,
all served by one event loop in the node's namespace.

A socket keeps the namespace it was created in, so `attach` makes both in a short-lived thread
that enters the task namespace (dataplane.namespaces), then hands them to the loop. Which socket
a query came in on says which task asked, and so which scope answers it. The protocol classes
are thin: bytes to core.respond and back; forwards go to a Forwarder as tasks of their own.

Bad input never stops the loop: the core answers FORMERR or drops; a TCP stream that is not
DNS is closed; idle TCP connections are closed after a while; a TCP client that does not read
its answers is cut off instead of buffering without end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from shoal.dataplane import namespaces
from shoal.dns import core, wire
from shoal.dns.forward import Forwarder
from shoal.dns.tables import Tables
from shoal.errors import KernelError, NotFound

log = logging.getLogger("shoal.dns.server")

LISTEN = ("127.0.0.11", 53)  # Docker's address for the embedded server
UDP_RCVBUF = 1 << 20  # absorbs a burst while the loop is busy with a view change
UDP_BATCH = 64  # datagrams per wakeup of one socket, so that one busy task cannot hog the loop
TCP_BACKLOG = 64
TCP_IDLE = 10.0  # RFC 7766 6.2.3: a few seconds of idleness is enough
TCP_MAX_CONNS = 64  # per task
TCP_MAX_WRITE_BUFFER = 1 << 20  # answers a client has not read: beyond this it is cut off


@dataclass
class Listener:
    task_id: str
    netns: str
    udp: UdpServer
    tcp: asyncio.AbstractServer | None = None
    conns: set[TcpConn] = field(default_factory=set)

    def close(self) -> None:
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        for conn in list(self.conns):
            conn.close()


def bind_in_namespace(netns: str, addr: tuple[str, int] = LISTEN) -> tuple[socket.socket,
                                                                             socket.socket]:
    """A bound UDP socket and a listening TCP socket on addr inside namespace `netns`."""
    fd = namespaces.open_fd(netns)
    if fd is None:
        raise NotFound(f"namespace {netns} does not exist")

    def make() -> tuple[socket.socket, socket.socket]:
        namespaces.enter(fd)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            udp.bind(addr)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(addr)
            tcp.listen(TCP_BACKLOG)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp

    try:
        return namespaces.in_thread(make)
    except OSError as exc:
        raise KernelError(f"bind {addr[0]}:{addr[1]} in namespace {netns}: "
                          f"{exc.strerror or exc}") from exc
    finally:
        os.close(fd)


class Server:
    """Every listener of this node, the tables they answer from and the forwarder."""

    def __init__(self, tables: Tables, forwarder: Forwarder) -> None:
        self.tables = tables
        self.forwarder = forwarder
        self.listeners: dict[str, Listener] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def attach(self, task_id: str, netns: str) -> None:
        old = self.listeners.get(task_id)
        if old is not None:
            if old.netns == netns:
                return
            self.detach(task_id)
        udp_sock, tcp_sock = bind_in_namespace(netns)
        await self.listen(task_id, netns, udp_sock, tcp_sock)

    async def listen(self, task_id: str, netns: str, udp_sock: socket.socket,
                     tcp_sock: socket.socket) -> None:
        """Serve task_id's queries on these sockets (bound, non-blocking; tests bind their own
        on port 0 in their own namespace)."""
        loop = asyncio.get_running_loop()
        try:
            udp = UdpServer(self, task_id, udp_sock, loop)
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        listener = Listener(task_id, netns, udp)
        try:
            listener.tcp = await loop.create_server(lambda: TcpConn(self, listener),
                                                    sock=tcp_sock)
        except BaseException:
            udp.close()
            tcp_sock.close()
            raise
        self.listeners[task_id] = listener

    def detach(self, task_id: str) -> None:
        listener = self.listeners.pop(task_id, None)
        if listener is not None:
            listener.close()

    def close(self) -> None:
        for task_id in list(self.listeners):
            self.detach(task_id)
        for t in self._tasks:
            t.cancel()
        self.forwarder.close()

    def spawn_forward(self, fwd: core.Forward, tcp: bool, send: _Send) -> None:
        if not self.forwarder.admit():
            send(core.failed(fwd, wire.REFUSED))
            return
        t = asyncio.get_running_loop().create_task(self._forward(fwd, tcp, send))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _forward(self, fwd: core.Forward, tcp: bool, send: _Send) -> None:
        try:
            answer = await self.forwarder.resolve(fwd, tcp)
        except Exception:  # a bug must cost one answer, never the loop
            log.exception("forwarding failed")
            answer = core.failed(fwd)
        send(answer)


class _Send:
    """Sends one answer back to where its query came from (a callable, for forwards)."""

    __slots__ = ("udp", "addr", "conn")

    def __init__(self, udp: UdpServer | None, addr: object, conn: TcpConn | None = None) -> None:
        self.udp, self.addr, self.conn = udp, addr, conn

    def __call__(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.send(data)
        elif self.udp is not None:
            self.udp.sendto(data, self.addr)


class UdpServer:
    """One task's UDP socket, read straight from the loop: each time it is readable, up to
    UDP_BATCH datagrams are taken and answered in one go. (Measured: on the default asyncio
    loop a DatagramProtocol cost three times the CPU per query of this; on uvloop the two are
    about even, so this one way serves well on both; docs/dns.md.)"""

    def __init__(self, server: Server, task_id: str, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.task_id = task_id
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        asker = self.server.tables.asker(self.task_id)
        replies = asker.scope.replies  # core.respond's first step, inlined: the hot path
        respond = core.respond
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(wire.MAX_TCP)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. the socket closed under us
            done = replies.get(data[2:])
            if done is not None:
                try:
                    sendto(data[:2] + done, addr)
                except OSError:
                    pass
                continue
            try:
                out = respond(data, asker, False)
            except Exception:  # never let one packet stop the others
                log.exception("answering a query from task %s", self.task_id)
                continue
            if out is None:
                continue
            if type(out) is bytes:
                try:
                    sendto(out, addr)
                except OSError:
                    pass  # a full buffer or a client gone: it asks again
            else:
                self.server.spawn_forward(out, False, _Send(self, addr))  # type: ignore[arg-type]

    def sendto(self, data: bytes, addr: object) -> None:
        if self.fd < 0:
            return
        try:
            self.sock.sendto(data, addr)  # type: ignore[arg-type]
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.fd = -1
            self.sock.close()


class TcpConn(asyncio.Protocol):
    """One DNS-over-TCP connection: two-byte length, message; pipelined queries allowed."""

    def __init__(self, server: Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.listener.conns) >= TCP_MAX_CONNS:
            transport.close()
            return
        self.listener.conns.add(self)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.conns.discard(self)
        if self.idle is not None:
            self.idle.cancel()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.close)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(struct.pack("!H", len(data)) + data)
        if t.get_write_buffer_size() > TCP_MAX_WRITE_BUFFER:
            t.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._touch()
        while len(self.buf) >= 2:
            length = (self.buf[0] << 8) | self.buf[1]
            if length < wire.HEADER_LEN:
                self.close()  # not DNS: nothing sensible can follow
                return
            if len(self.buf) < 2 + length:
                return
            msg = bytes(self.buf[2:2 + length])
            del self.buf[:2 + length]
            try:
                out = core.respond(msg, self.server.tables.asker(self.listener.task_id), True)
            except Exception:
                log.exception("answering a TCP query from task %s", self.listener.task_id)
                out = None
            if out is None:
                self.close()
                return
            if type(out) is bytes:
                self.send(out)
            else:
                self.server.spawn_forward(out, True,  # type: ignore[arg-type]
                                          _Send(None, None, self))
