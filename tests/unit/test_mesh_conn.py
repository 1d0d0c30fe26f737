"""The connection state machines of proxy.py, driven with fake transports (no sockets)."""

import asyncio

from shoal.mesh.proxy import Backend, HttpClient
from shoal.mesh.routes import parse_routes
from shoal.mesh.server import MeshServer


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def data(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return ("192.0.2.7", 40000) if name == "peername" else default


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def setup(n_backends: int = 1):
    server = MeshServer()
    server.set_routes(parse_routes({"http": {"a.test": ["127.0.0.1:1"]}}))
    client = HttpClient(server)
    client.connection_made(FakeTransport())
    backends = []
    for _ in range(n_backends):
        b = Backend(server, ("127.0.0.1", 1))
        b.connection_made(FakeTransport())
        server.pool.release(b)
        backends.append(b)
    return server, client, backends


async def test_pipelined_requests_wait_for_the_response_before_them():
    server, client, (b,) = setup()
    client.data_received(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test"
                         b"\r\n\r\n")
    sent = b.transport.data()
    assert sent.startswith(b"GET /1 ") and b"GET /2" not in sent
    b.data_received(OK)
    assert client.transport.data() == OK
    assert b.transport.data().startswith(b"GET /2 ")  # same pooled connection, in order
    b.data_received(OK)
    assert client.transport.data() == OK and server.pool.idle[("127.0.0.1", 1)] == [b]


async def test_response_split_anywhere():
    server, client, (b,) = setup()
    client.data_received(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for i in range(len(resp)):
        b.data_received(resp[i : i + 1])
    assert client.transport.data() == resp
    assert server.pool.idle[("127.0.0.1", 1)] == [b]  # response ended: back in the pool


async def test_stale_pooled_connection_is_retried_on_a_new_one(monkeypatch):
    server, client, (stale,) = setup()
    stale.idle_since = 1.0  # it had served before
    fresh = Backend(server, ("127.0.0.1", 1))

    async def connect(order, factory):
        fresh.connection_made(FakeTransport())
        return fresh

    monkeypatch.setattr(server.pool, "connect", connect)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    stale.connection_lost(None)  # the backend had closed it just as it was reused
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert fresh.transport.data().startswith(b"GET / HTTP/1.1")
    fresh.data_received(OK)
    assert client.transport.data() == OK


async def test_no_retry_once_a_body_was_sent():
    server, client, (stale,) = setup()
    stale.idle_since = 1.0
    client.data_received(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi")
    stale.connection_lost(None)
    assert client.transport.data().startswith(b"HTTP/1.1 502 ")
    assert client.transport.closed


async def test_early_final_response_closes_both():
    server, client, (b,) = setup()
    client.data_received(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nabc")
    b.data_received(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert client.transport.data().startswith(b"HTTP/1.1 413")
    assert client.transport.closed and b.transport.closed
    assert not server.pool.idle.get(("127.0.0.1", 1))


async def test_flow_control_both_ways():
    server, client, (b,) = setup()
    client.data_received(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n")
    b.pause_writing()  # the backend's socket is full: stop reading the client
    assert not client.transport.reading
    b.resume_writing()
    assert client.transport.reading
    client.pause_writing()  # the client's socket is full: stop reading the backend
    assert not b.transport.reading
    client.resume_writing()
    assert b.transport.reading


async def test_bad_backend_response_is_502():
    server, client, (b,) = setup()
    client.data_received(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    b.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert client.transport.data().startswith(b"HTTP/1.1 502 ") and b.transport.closed


async def test_unknown_host_keeps_the_connection():
    server, client, _ = setup()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\nGET / HTTP/1.1\r\nHost: y\r\n\r\n")
    out = client.transport.data()
    assert out.count(b"HTTP/1.1 503 ") == 2 and not client.transport.closed


async def test_slow_head_times_out():
    server, client, _ = setup()
    client.data_received(b"GET / HTTP/1.1\r\nHo")
    server.sweep(client.deadline + 0.5)
    assert not client.transport.closed  # within the one-tick allowance
    server.sweep(client.deadline + 1.5)
    assert client.transport.closed
    await server.close()
