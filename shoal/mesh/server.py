"""MeshServer: the listeners, the current routing table, the backend pool and the timers.

It runs inside an event loop that someone else owns (the mesh process, or a test), so it can
be driven without a subprocess. `set_routes` swaps the table in one assignment: a request
looks the table up once, when its head is complete, so it sees the old or the new table, and
connections already forwarding keep their backend.

One timer per second sets a coarse clock (`now`: deadlines are checked at one-second
granularity anyway, and reading the loop's clock per request showed in profiles), walks the
connections for deadlines (a request head or ClientHello not
complete in `header_timeout`, a keep-alive connection idle for `idle_timeout`) and closes
backend connections idle in the pool for `backend_idle_timeout`. A timer per request would
cost more than the requests themselves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Protocol

from shoal.mesh.pool import Pool
from shoal.mesh.proxy import HttpClient
from shoal.mesh.routes import Addr, RouteTable
from shoal.mesh.tls import TlsClient

log = logging.getLogger("shoal.mesh")


@dataclass(frozen=True)
class MeshConfig:
    header_timeout: float = 10.0  # a request head or ClientHello, from its first byte
    idle_timeout: float = 60.0  # a keep-alive client connection between requests
    connect_timeout: float = 3.0  # per backend tried
    backend_idle_timeout: float = 30.0  # below common backend keep-alive timeouts would be
    max_idle_per_backend: int = 256
    max_head: int = 64 * 1024  # request head size; larger is 431
    down_time: float = 2.0  # a backend that refused is tried last for this long
    backlog: int = 4096


class _Timed(Protocol):
    deadline: float

    def timeout(self) -> None: ...


def listen_socket(addr: Addr, reuse_port: bool = False) -> socket.socket:
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class MeshServer:
    def __init__(self, config: MeshConfig | None = None, table: RouteTable | None = None) -> None:
        self.config = config or MeshConfig()
        self.table = table or RouteTable()
        self.loop = asyncio.get_running_loop()
        self.pool = Pool(self.loop, self.config.max_idle_per_backend,
                         self.config.backend_idle_timeout, self.config.connect_timeout,
                         self.config.down_time)
        self.conns: set[_Timed] = set()
        self.now = self.loop.time()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.http_address: Addr | None = None
        self.https_address: Addr | None = None

    async def start(self, http: Addr | None, https: Addr | None, reuse_port: bool = False,
                    socks: dict[str, socket.socket] | None = None) -> None:
        """Listen on `http` and `https` (either may be None). Port 0 takes a free port; see
        `http_address` / `https_address` for what was bound. `socks` may give ready sockets."""
        socks = dict(socks or {})
        try:
            for kind, addr in (("http", http), ("https", https)):
                if addr is None and kind not in socks:
                    continue
                sock = socks.pop(kind, None) or listen_socket(addr, reuse_port)  # type: ignore
                factory = (lambda: HttpClient(self)) if kind == "http" else (
                    lambda: TlsClient(self))
                server = await self.loop.create_server(factory, sock=sock,
                                                       backlog=self.config.backlog)
                self._servers.append(server)
                bound = sock.getsockname()
                setattr(self, f"{kind}_address", (bound[0], bound[1]))
        except BaseException:
            await self.close()
            raise
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def set_routes(self, table: RouteTable) -> None:
        self.table = table
        self.pool.prune(table.addrs())

    def _sweep(self) -> None:
        self.sweep(self.loop.time())
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def sweep(self, now: float) -> None:
        """Close what is past its deadline at `now` (the clock is an argument for tests)."""
        self.now = now
        # Deadlines were set from the coarse clock, up to one tick stale: allow that tick, so
        # a connection gets between its timeout and its timeout + 2 s, never less.
        late = now - 1.0
        expired = [c for c in self.conns if c.deadline and c.deadline < late]
        for c in expired:
            c.timeout()
        self.pool.sweep(now)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for c in list(self.conns):
            c.timeout()  # closes
        self.pool.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
