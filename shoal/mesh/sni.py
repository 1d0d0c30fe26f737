"""The server name in a TLS ClientHello, read without terminating TLS.

`parse_client_hello(data)` looks at the bytes a client sent first and answers one of: more
bytes needed, the ClientHello with its SNI host name (or none), or invalid. It never raises
and never reads past what it was given; everything a length field claims is checked against
the bytes present and against `MAX_HELLO` (a ClientHello with post-quantum key shares is
about 2 KiB; 64 KiB leaves room and still bounds what a slow client makes the mesh hold).

Layout (RFC 8446 section 4.1.2, RFC 6066 section 3): records of type 22 (handshake) carry
the handshake message, which may be split over several records; the message is type 1,
a 3-byte length, then version, random, session id, cipher suites, compression methods and
extensions, of which server_name (type 0) holds a list of (type 0 = host_name, name).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.mesh.routes import normalize_name

MAX_HELLO = 64 * 1024
_RECORD_MAX = 16384 + 256  # plaintext records are at most 2^14 bytes; a little slack

MORE = "more"
DONE = "done"
INVALID = "invalid"

# Fatal alerts, sent in a TLS 1.0 record header as servers do before a version is agreed.
ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x01\x00\x02\x02\x70"
ALERT_DECODE_ERROR = b"\x15\x03\x01\x00\x02\x02\x32"


@dataclass(frozen=True, slots=True)
class Hello:
    status: str  # MORE, DONE or INVALID
    sni: str | None = None  # normalised host name, when DONE and the client sent one
    reason: str = ""


NEED_MORE = Hello(MORE)


def _invalid(reason: str) -> Hello:
    return Hello(INVALID, None, reason)


def parse_client_hello(data: bytes) -> Hello:
    try:
        return _parse(data)
    except (IndexError, ValueError) as exc:  # a bounds check missed below: still no escape
        return _invalid(f"malformed ClientHello ({exc.__class__.__name__})")


def _parse(data: bytes) -> Hello:
    message = b""
    i = 0
    n = len(data)
    while True:
        if n - i < 5:
            return NEED_MORE if n <= MAX_HELLO else _invalid("ClientHello too large")
        if data[i] != 22:
            return _invalid("not a TLS handshake record")
        if data[i + 1] != 3:
            return _invalid("not a TLS record version")
        size = int.from_bytes(data[i + 3 : i + 5], "big")
        if size == 0 or size > _RECORD_MAX:
            return _invalid("bad TLS record length")
        if n - i - 5 < size:
            return NEED_MORE if n <= MAX_HELLO + 5 * 16 else _invalid("ClientHello too large")
        message += data[i + 5 : i + 5 + size]
        i += 5 + size
        if len(message) >= 4:
            if message[0] != 1:
                return _invalid("first handshake message is not a ClientHello")
            length = int.from_bytes(message[1:4], "big")
            if length > MAX_HELLO:
                return _invalid("ClientHello too large")
            if len(message) >= 4 + length:
                return _parse_body(message[4 : 4 + length])


def _parse_body(b: bytes) -> Hello:
    n = len(b)
    p = 2 + 32  # legacy_version, random
    if p + 1 > n:
        return _invalid("ClientHello truncated")
    p += 1 + b[p]  # session id
    if p + 2 > n:
        return _invalid("ClientHello truncated")
    suites = int.from_bytes(b[p : p + 2], "big")
    if suites < 2 or suites % 2:
        return _invalid("bad cipher suites")
    p += 2 + suites
    if p + 1 > n:
        return _invalid("ClientHello truncated")
    p += 1 + b[p]  # compression methods
    if p > n:
        return _invalid("ClientHello truncated")
    if p == n:
        return Hello(DONE)  # no extensions at all: no SNI
    if p + 2 > n:
        return _invalid("ClientHello truncated")
    end = p + 2 + int.from_bytes(b[p : p + 2], "big")
    if end != n:
        return _invalid("extensions length does not match the message")
    p += 2
    sni: str | None = None
    seen = False
    while p < end:
        if p + 4 > end:
            return _invalid("extension header truncated")
        kind = int.from_bytes(b[p : p + 2], "big")
        size = int.from_bytes(b[p + 2 : p + 4], "big")
        p += 4
        if p + size > end:
            return _invalid("extension truncated")
        if kind == 0:
            if seen:
                return _invalid("server_name given twice")
            seen = True
            result = _server_name(b[p : p + size])
            if isinstance(result, Hello):
                return result
            sni = result
        p += size
    return Hello(DONE, sni)


def _server_name(ext: bytes) -> str | None | Hello:
    if not ext:
        return None  # the empty form a server sends back; treat as no name
    if len(ext) < 2 or int.from_bytes(ext[0:2], "big") != len(ext) - 2:
        return _invalid("bad server_name list length")
    p = 2
    name: str | None = None
    while p < len(ext):
        if p + 3 > len(ext):
            return _invalid("server_name entry truncated")
        kind = ext[p]
        size = int.from_bytes(ext[p + 1 : p + 3], "big")
        p += 3
        if p + size > len(ext):
            return _invalid("server_name entry truncated")
        if kind == 0:
            if name is not None:
                return _invalid("more than one host_name")
            raw = ext[p : p + size]
            if not raw.isascii():
                return _invalid("host_name is not ASCII")
            name = normalize_name(raw.decode("ascii"))
            if name is None or name.startswith("["):
                return _invalid("bad host_name")
        p += size
    return name
