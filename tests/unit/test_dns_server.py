"""The resolver's sockets and forwarding, for real over loopback (no root: the server's sockets
are bound on port 0 here instead of 127.0.0.11:53 in a task namespace), with fake upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from shoal.dns import forward
from shoal.dns.forward import Forwarder
from shoal.dns.server import Server
from tests.unit.dns_views import base_view, tables

Handler = Callable[[dns.message.Message], dns.message.Message | None]


def bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on the same free port of 127.0.0.1 (the port the UDP
    socket got may be taken for TCP by someone else: try again)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise OSError("no free port pair")


class FakeUpstream(asyncio.DatagramProtocol):
    """A UDP (and TCP) DNS server on 127.0.0.1:<random> answering with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.seen.append(str(query.question[0].name))
        reply = self.handler(query)
        if reply is not None:
            assert self.transport is not None
            self.transport.sendto(reply.to_wire(), addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[tuple[str, FakeUpstream]]:
    loop = asyncio.get_running_loop()
    fake = FakeUpstream(handler)
    udp, tcp_sock = bind_pair()
    transport, _ = await loop.create_datagram_endpoint(lambda: fake, sock=udp)
    port = udp.getsockname()[1]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        query = dns.message.from_wire(await reader.readexactly(n))
        fake.seen.append("tcp:" + str(query.question[0].name))
        reply = handler(query)
        if reply is not None:
            wire_ = reply.to_wire()
            writer.write(struct.pack("!H", len(wire_)) + wire_)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp, sock=tcp_sock)
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        transport.close()
        server.close()


def answer_a(ip: str) -> Handler:
    def handle(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", ip))
        return r
    return handle


def rcode_only(rcode: int) -> Handler:
    def handle(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        return r
    return handle


@contextlib.asynccontextmanager
async def resolver(nameservers: list[str], timeout: float = 0.3,
                   max_inflight: int = 64) -> AsyncIterator[tuple[int, Server]]:
    """The resolver serving task `client` on 127.0.0.1:<port>, with these upstreams."""
    view = base_view()
    view["tasks"]["client"]["dns"]["nameservers"] = nameservers
    # parse_upstream refuses loopback servers (in a node they are nobody's), so the fakes on
    # 127.0.0.1 are put in by hand
    t = tables(view)
    ups = []
    for item in nameservers:
        host, port = item.split(":")
        ups.append((host, int(port)))
    t.askers.clear()
    asker = t.asker("client")
    t.askers["client"] = type(asker)(asker.task_id, asker.scope, tuple(ups), True)
    server = Server(t, Forwarder(timeout, max_inflight))
    udp, tcp = bind_pair()
    port = udp.getsockname()[1]
    await server.listen("client", "test", udp, tcp)
    try:
        yield port, server
    finally:
        server.close()


async def query(port: int, name: str, rdtype: str = "A", tcp: bool = False,
                timeout: float = 3.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=timeout)


def ips(msg: dns.message.Message) -> list[str]:
    return [r.address for rrset in msg.answer for r in rrset]


async def test_cluster_names_over_udp_and_tcp() -> None:
    async with resolver(["127.0.0.1:9"]) as (port, _):
        assert ips(await query(port, "web")) == ["10.0.1.2"]
        assert ips(await query(port, "web", tcp=True)) == ["10.0.1.2"]


async def test_forward_in_order_servfail_moves_on_nxdomain_stops() -> None:
    async with upstream(rcode_only(dns.rcode.SERVFAIL)) as (bad, bad_fake), \
            upstream(rcode_only(dns.rcode.NXDOMAIN)) as (nx, nx_fake), \
            upstream(answer_a("192.0.2.7")) as (good, good_fake):
        async with resolver([bad, good]) as (port, _):
            msg = await query(port, "www.outside.test")
            assert ips(msg) == ["192.0.2.7"]
            assert bad_fake.seen == good_fake.seen == ["www.outside.test."]
            msg = await query(port, "www.outside.test", tcp=True)
            assert ips(msg) == ["192.0.2.7"] and "tcp:www.outside.test." in good_fake.seen
        async with resolver([nx, good]) as (port, _):
            msg = await query(port, "nosuch.outside.test")
            assert msg.rcode() == dns.rcode.NXDOMAIN
            assert good_fake.seen.count("nosuch.outside.test.") == 0


async def test_silence_and_refusals_give_servfail() -> None:
    async with upstream(lambda q: None) as (silent, _), \
            upstream(rcode_only(dns.rcode.REFUSED)) as (refusing, _):
        async with resolver([silent, refusing], timeout=0.2) as (port, _):
            loop = asyncio.get_running_loop()
            started = loop.time()
            msg = await query(port, "www.outside.test")
            assert msg.rcode() == dns.rcode.SERVFAIL
            assert loop.time() - started < 1.5
        # nobody listening at all: ICMP port unreachable moves on at once
        async with resolver(["127.0.0.1:9"], timeout=2.0) as (port, _):
            started = asyncio.get_running_loop().time()
            assert (await query(port, "x.test")).rcode() == dns.rcode.SERVFAIL
            assert asyncio.get_running_loop().time() - started < 1.0


async def test_forwards_in_flight_are_bounded() -> None:
    async with upstream(lambda q: None) as (silent, _):
        async with resolver([silent], timeout=0.5, max_inflight=4) as (port, server):
            results = await asyncio.gather(*(query(port, f"n{i}.test") for i in range(12)))
            codes = sorted(dns.rcode.to_text(m.rcode()) for m in results)
            assert codes == ["REFUSED"] * 8 + ["SERVFAIL"] * 4
            assert server.forwarder.refused == 8 and server.forwarder.inflight == 0
            # cluster names are answered all the while
            assert ips(await query(port, "web")) == ["10.0.1.2"]


async def test_garbage_over_tcp_is_cut_off_and_others_still_served() -> None:
    async with resolver(["127.0.0.1:9"]) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x03abc")  # a "message" too short to be DNS
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xff\xff" + b"x" * 100)  # a length never completed: just waits
        await writer.drain()
        assert ips(await query(port, "web", tcp=True)) == ["10.0.1.2"]
        writer.close()
        # pipelined queries on one connection
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for name in ("web", "rr"):
            w = dns.message.make_query(name, "A").to_wire()
            writer.write(struct.pack("!H", len(w)) + w)
        await writer.drain()
        got = []
        for _ in range(2):
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            got.append(ips(dns.message.from_wire(await reader.readexactly(n))))
        assert sorted(map(sorted, got)) == [["10.0.1.2"], ["10.0.1.21", "10.0.1.22"]]
        writer.close()


async def test_a_flood_of_junk_does_not_stall_others() -> None:
    async with resolver(["127.0.0.1:9"]) as (port, _):
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.setblocking(False)
        junk = [b"", b"\x00" * 5, b"\xff" * 40, b"\x12\x34\x01\x00\xff\xff" + b"\x00" * 30]
        for i in range(5000):
            with contextlib.suppress(BlockingIOError):
                flood.sendto(junk[i % len(junk)], ("127.0.0.1", port))
        flood.close()
        # The flood may have filled the socket's buffer (a real client's first try is lost
        # then, as with any server); the loop works the backlog off in well under a second.
        for _ in range(5):
            with contextlib.suppress(dns.exception.Timeout):
                assert ips(await query(port, "web", timeout=0.4)) == ["10.0.1.2"]
                return
        raise AssertionError("no answer within 2 s of a flood")


def test_forwarder_admission() -> None:
    f = Forwarder(1.0, 2)
    assert f.admit() and f.admit() and not f.admit()
    assert f.refused == 1


async def test_channels_are_reused_and_replaced() -> None:
    async with upstream(answer_a("192.0.2.7")) as (good, _):
        async with resolver([good]) as (port, server):
            for i in range(20):
                assert ips(await query(port, f"n{i}.test")) == ["192.0.2.7"]
            pool = next(iter(server.forwarder.channels.values()))
            assert len(pool) == forward.CHANNELS
            ports = {ch.sock.getsockname()[1] for ch in pool}
            for ch in pool:
                ch.uses = forward.CHANNEL_USES  # worn out: the next asks replace them
            for i in range(20):
                assert ips(await query(port, f"m{i}.test")) == ["192.0.2.7"]
            assert not ports & {ch.sock.getsockname()[1] for ch in pool}
