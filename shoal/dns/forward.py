"""Forwarding: names the cluster does not know go to the asker's upstream servers.

At most three upstreams, in order, each with its own timeout. SERVFAIL or REFUSED (or silence,
or an unreachable server) moves on to the next; any other answer, NXDOMAIN included, goes back
to the client as it came, with the client's id. Over UDP from the client, UDP to the upstream
(a TC answer is passed on, so the client retries over TCP); over TCP, TCP.

UDP goes through a few long-lived sockets per upstream (channels), each connected to it from
its own random port, each query with a random id: a reply from anywhere else is never read,
one with an unknown id or another question is dropped (RFC 5452). Channels are replaced after
a while, so the ports change too. (One socket per query, measured first, cost several times
the CPU and gave a millisecond tail: docs/dns.md.)

The number of forwards in flight is bounded: beyond it the client gets REFUSED at once, so a
flood of outside names costs bounded memory and never slows cluster answers. The sockets are
made in the resolver's own namespace, the node's: forwarded queries leave from the node, over
its underlay, never from the task.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time

from shoal.dns import core, wire
from shoal.dns.tables import Upstream

log = logging.getLogger("shoal.dns.forward")

CHANNELS = 4  # UDP sockets per upstream
CHANNEL_USES = 10_000  # queries before a channel is replaced (with a new random port)
CHANNEL_AGE = 60.0  # seconds before a channel is replaced

_rand = random.SystemRandom()  # ids an off-path attacker must guess


class Channel:
    """One connected UDP socket to one upstream, and the queries waiting for a reply on it."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect(upstream)  # no packet is sent; ICMP errors now reach this socket
        except OSError:
            self.sock.close()
            raise
        self.loop = loop
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.uses = 0
        self.born = time.monotonic()
        self.closed = False
        loop.add_reader(self.sock.fileno(), self._readable)

    def worn(self) -> bool:
        return self.uses >= CHANNEL_USES or time.monotonic() - self.born > CHANNEL_AGE

    def ask(self, query: bytes, question: bytes) -> tuple[int, asyncio.Future[bytes]]:
        """Send the query with a fresh id; the future gets the reply. Raises OSError."""
        qid = _rand.getrandbits(16)
        while qid in self.pending:
            qid = _rand.getrandbits(16)
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.sock.send(core.with_id(query, qid))
        self.pending[qid] = (fut, question)
        self.uses += 1
        return qid, fut

    def done(self, qid: int) -> None:
        self.pending.pop(qid, None)
        if self.closed and not self.pending:
            self._close()

    def _readable(self) -> None:
        for _ in range(64):
            try:
                reply = self.sock.recv(wire.MAX_TCP)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP unreachable for one of our queries: the upstream is not there; every
                # query waiting on it may move on at once.
                for fut, _ in self.pending.values():
                    if not fut.done():
                        fut.set_exception(OSError(exc.errno, exc.strerror))
                return
            if len(reply) < wire.HEADER_LEN:
                continue
            waiting = self.pending.get((reply[0] << 8) | reply[1])
            if waiting is None:
                continue  # late (timed out) or not ours
            fut, question = waiting
            if not fut.done() and core.upstream_rcode(reply, (reply[0] << 8) | reply[1],
                                                      question) is not None:
                fut.set_result(reply)

    def retire(self) -> None:
        self.closed = True
        if not self.pending:
            self._close()

    def _close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class Forwarder:
    def __init__(self, timeout: float = 2.0, max_inflight: int = 256) -> None:
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.inflight = 0
        self.refused = 0  # forwards turned away at the bound, for the logs and the bench
        self.channels: dict[Upstream, list[Channel]] = {}

    def admit(self) -> bool:
        """Take a slot for one forward; False (and count it) when all are taken."""
        if self.inflight >= self.max_inflight:
            self.refused += 1
            return False
        self.inflight += 1
        return True

    async def resolve(self, fwd: core.Forward, tcp: bool) -> bytes:
        """The answer for the client. Call only after admit() returned True."""
        client_id = struct.unpack_from("!H", fwd.query)[0]
        try:
            for upstream in fwd.upstreams:
                try:
                    async with asyncio.timeout(self.timeout):
                        if tcp:
                            reply = await _ask_tcp(fwd.query, fwd.question, upstream)
                        else:
                            reply = await self._ask_udp(fwd, upstream)
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    log.debug("upstream %s:%d: %s", *upstream, exc or "timed out")
                    continue
                if reply is None or reply[3] & 0x0F in (wire.SERVFAIL, wire.REFUSED):
                    continue
                return core.with_id(reply, client_id)
            return core.failed(fwd)
        finally:
            self.inflight -= 1

    def _channel(self, upstream: Upstream) -> Channel:
        pool = self.channels.setdefault(upstream, [])
        for i, ch in enumerate(pool):
            if ch.worn():
                ch.retire()
                pool[i] = Channel(upstream, asyncio.get_running_loop())
        if len(pool) < CHANNELS:
            pool.append(Channel(upstream, asyncio.get_running_loop()))
            return pool[-1]
        return _rand.choice(pool)

    async def _ask_udp(self, fwd: core.Forward, upstream: Upstream) -> bytes:
        ch = self._channel(upstream)
        qid, fut = ch.ask(fwd.query, fwd.question)
        try:
            return await fut
        finally:
            ch.done(qid)

    def close(self) -> None:
        for pool in self.channels.values():
            for ch in pool:
                ch.retire()
        self.channels.clear()


async def _ask_tcp(query: bytes, question: bytes, upstream: Upstream) -> bytes | None:
    qid = _rand.getrandbits(16)
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(query)) + core.with_id(query, qid))
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = await reader.readexactly(length)
    finally:
        writer.close()
    return reply if core.upstream_rcode(reply, qid, question) is not None else None
