"""Backend connections: an idle pool per backend address, and connecting with failover.

A backend that refuses a connection (or does not answer within the connect timeout) is tried
last for `down_time` seconds, so one dead task costs one refused connect, not one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from shoal.mesh.errors import MeshError
from shoal.mesh.routes import Addr, format_addr


class Pooled(Protocol):
    addr: Addr
    idle_since: float

    def close(self) -> None: ...


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_idle: int, idle_timeout: float,
                 connect_timeout: float, down_time: float) -> None:
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.down_time = down_time
        self.idle: dict[Addr, list[Pooled]] = {}
        self.now = loop.time()  # the server's coarse clock, set by its sweep
        self.down_until: dict[Addr, float] = {}

    def acquire(self, addr: Addr) -> Pooled | None:
        conns = self.idle.get(addr)
        if conns:
            return conns.pop()  # the most recently used one: the least likely to be stale
        return None

    def release(self, conn: Pooled) -> None:
        conns = self.idle.get(conn.addr)
        if conns is None:
            conns = self.idle[conn.addr] = []
        if len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.now
        conns.append(conn)

    def discard(self, conn: Pooled) -> None:
        """A pooled connection closed by its backend."""
        conns = self.idle.get(conn.addr)
        if conns and conn in conns:
            conns.remove(conn)

    def sweep(self, now: float) -> None:
        self.now = now
        for addr, conns in list(self.idle.items()):
            stale = [c for c in conns if now - c.idle_since > self.idle_timeout]
            for c in stale:
                conns.remove(c)
                c.close()
            if not conns:
                del self.idle[addr]
        for addr, until in list(self.down_until.items()):
            if until < now:
                del self.down_until[addr]

    def prune(self, keep: set[Addr]) -> None:
        """Close idle connections to backends that left every route."""
        for addr in [a for a in self.idle if a not in keep]:
            for c in self.idle.pop(addr):
                c.close()

    def close(self) -> None:
        self.prune(set())

    async def connect(self, order: list[Addr],
                      factory: Callable[[Addr], asyncio.Protocol]) -> asyncio.Protocol:
        """Connect to the first backend in `order` that accepts; healthy ones first."""
        if self.down_until:
            now = self.loop.time()
            order.sort(key=lambda a: self.down_until.get(a, 0.0) > now)  # stable: keeps RR
        errors = []
        for addr in order:
            try:
                _, proto = await asyncio.wait_for(
                    self.loop.create_connection(lambda a=addr: factory(a), addr[0], addr[1]),
                    self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                self.down_until[addr] = self.loop.time() + self.down_time
                errors.append(f"{format_addr(addr)}: {exc or 'timeout'}")
                continue
            self.down_until.pop(addr, None)
            return proto
        raise MeshError("no backend accepted the connection: " + "; ".join(errors))
