"""Message bodies: where one ends, without copying or decoding it.

The mesh forwards body bytes exactly as they arrived (chunked stays chunked), so all it needs
is the index where a message ends. `feed(data, start)` consumes from `data[start:]` and returns
the index just past the last byte that belongs to this body; `done` says whether it ended.
Work is per chunk header, never per body byte.

Chunked parsing is strict (RFC 9112 section 7.1): sizes are 1-16 hex digits, every line ends
in CRLF and nothing else, and trailers are bounded. A parser that is lenient here is how
request smuggling starts; the mesh rejects what a strict backend could read differently.
"""

from __future__ import annotations

from shoal.mesh.errors import HttpError

MAX_CHUNK_LINE = 4096  # size line with its extensions
MAX_TRAILERS = 64 * 1024
_HEX = b"0123456789abcdefABCDEF"
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class LengthBody:
    """A body of Content-Length bytes."""

    __slots__ = ("remaining", "done")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes, start: int) -> int:
        left = len(data) - start
        r = self.remaining
        if left >= r:
            self.remaining = 0
            self.done = True
            return start + r
        self.remaining = r - left
        return len(data)


class ChunkedBody:
    """A chunked body, trailers included. `status` is what a framing error answers with:
    400 for a client's request, 502 for a backend's response."""

    __slots__ = ("state", "remaining", "line", "trailer_bytes", "done", "status")

    def __init__(self, status: int = 400) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""
        self.trailer_bytes = 0
        self.done = False
        self.status = status

    def feed(self, data: bytes, start: int) -> int:
        i = start
        n = len(data)
        while i < n:
            if self.state == _DATA:
                r = self.remaining
                if n - i < r:
                    self.remaining = r - (n - i)
                    return n
                i += r
                self.remaining = 0
                self.state = _DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                self._check_partial()
                return n
            line = self.line + data[i : j + 1] if self.line else data[i : j + 1]
            self.line = b""
            i = j + 1
            self._line(line)
            if self.done:
                return i
        return i

    def _check_partial(self) -> None:
        limit = {_SIZE: MAX_CHUNK_LINE, _DATA_END: 1}.get(self.state, MAX_TRAILERS)
        if len(self.line) > limit or (self.state == _DATA_END and self.line not in (b"", b"\r")):
            raise self._error("line too long" if len(self.line) > limit else "no CRLF after data")

    def _line(self, line: bytes) -> None:
        # line ends with b"\n"; it must end with exactly one CRLF and hold no other CR.
        if len(line) < 2 or line[-2] != 13 or b"\r" in line[:-2]:
            raise self._error("line not ended by CRLF")
        state = self.state
        if state == _DATA_END:
            if len(line) != 2:
                raise self._error("no CRLF after data")
            self.state = _SIZE
        elif state == _SIZE:
            if len(line) > MAX_CHUNK_LINE:
                raise self._error("chunk size line too long")
            size, semi, _ext = line[:-2].partition(b";")
            if semi:
                size = size.rstrip(b" \t")  # BWS before chunk-ext (RFC 9112 section 7.1.1)
            if not 0 < len(size) <= 16 or size.translate(None, _HEX):
                raise self._error("bad chunk size")
            self.remaining = int(size, 16)
            self.state = _DATA if self.remaining else _TRAILER
        else:  # trailer section
            if len(line) == 2:
                self.done = True
                return
            self.trailer_bytes += len(line)
            name, colon, _ = line.partition(b":")
            if self.trailer_bytes > MAX_TRAILERS or not colon or not name or name.translate(
                    None, _TOKEN):
                raise self._error("bad trailer")

    def _error(self, what: str) -> HttpError:
        return HttpError(self.status, f"bad chunked body: {what}")
