"""A byte pipe between two TCP connections, for TLS passthrough.

Each side's protocol writes what it reads to the other side's transport. A FIN is passed on as
a FIN (write_eof) so that a half-closed stream stays correct; the pair closes when both
directions have ended or either side fails. Flow control: when one transport's write buffer
is full, the other side stops reading until it drains.
"""

from __future__ import annotations

import asyncio
from typing import cast

WRITE_HIGH = 256 * 1024


class Pipe(asyncio.Protocol):
    """One side of a pipe; `peer` is the other side once both are connected."""

    __slots__ = ("transport", "peer", "eof", "closed")

    def __init__(self) -> None:
        self.peer: Pipe | None = None
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH)

    def link(self, peer: Pipe) -> None:
        self.peer = peer
        peer.peer = self

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if peer is None or peer.closed:
            return None
        if peer.eof or not peer.transport.can_write_eof():
            peer.close()
            return None
        peer.transport.write_eof()
        return True  # keep reading the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
