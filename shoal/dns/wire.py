"""DNS wire format (RFC 1035, EDNS0 from RFC 6891): just what the resolver reads and writes.

Reading is strict and bounded: a question name may not use compression (no client sends one,
and refusing it makes compression loops impossible), a label is at most 63 bytes, a name at
most 255, and every length is checked against the packet before it is used. Anything else is
a `FormatError`, which the core turns into FORMERR or a silent drop.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Types and classes (RFC 1035 3.2.2, RFC 2782, RFC 3596, RFC 6891).
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
IN = 1

# Response codes (RFC 1035 4.1.1, RFC 6891 extended BADVERS).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Header flag bits, high byte then low byte.
QR, AA, TC, RD = 0x80, 0x04, 0x02, 0x01
RA = 0x80

HEADER_LEN = 12
MAX_UDP_PLAIN = 512  # RFC 1035 4.2.1: UDP answers without EDNS0
MAX_TCP = 65535  # RFC 1035 4.2.2: two-byte length prefix
EDNS_ADVERTISED = 1232  # what we announce in our OPT (the DNS flag day 2020 value)

_H = struct.Struct("!HBBHHHH")


class FormatError(Exception):
    """The packet is not a well-formed query; the message says why."""


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. `question` is the raw question section (name as sent, case kept, then
    type and class); `key` is the lower-cased name plus type and class, the lookup key."""

    id: int
    rd: bool
    question: bytes
    key: bytes
    qname_end: int  # offset of the type in the packet: 12 + len(name)
    qtype: int
    qclass: int
    edns: bool  # the query carried an OPT record
    udp_size: int  # largest UDP answer the client takes
    edns_version: int


def parse_name_plain(data: bytes, pos: int) -> int:
    """Offset just past an uncompressed name starting at pos. Raises FormatError."""
    end = len(data)
    total = 0
    while True:
        if pos >= end:
            raise FormatError("name runs past the end of the packet")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length > 63:
            # 0xC0: a compression pointer; 0x40/0x80: extended label types (RFC 6891 5).
            raise FormatError("compressed or extended label in the question")
        total += length + 1
        if total > 254:
            raise FormatError("name longer than 255 bytes")
        pos += length + 1


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises FormatError; the caller checks the header (len >= 12, QR clear,
    opcode QUERY) first, since those decide between a drop and an error answer."""
    _, _, _, qdcount, ancount, nscount, arcount = _H.unpack_from(data)
    if qdcount != 1:
        raise FormatError(f"QDCOUNT is {qdcount}, not 1")
    if ancount or nscount:
        raise FormatError("a query with answer or authority records")
    if arcount > 1:
        raise FormatError(f"ARCOUNT is {arcount}: at most one (OPT) is accepted")
    qname_end = parse_name_plain(data, HEADER_LEN)
    if qname_end + 4 > len(data):
        raise FormatError("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, qname_end)
    edns, udp_size, version = False, MAX_UDP_PLAIN, 0
    pos = qname_end + 4
    if arcount:
        # OPT: root owner name, type 41, class = UDP payload size, TTL = ext-rcode, version,
        # flags; then rdata. Other additional records in a query are not accepted.
        if pos + 11 > len(data) or data[pos] != 0:
            raise FormatError("additional record is not an OPT with the root name")
        rtype, size, _, version, _, rdlen = struct.unpack_from("!HHBBHH", data, pos + 1)
        if rtype != OPT:
            raise FormatError(f"additional record of type {rtype}, not OPT")
        if pos + 11 + rdlen > len(data):
            raise FormatError("OPT data runs past the end of the packet")
        edns, udp_size = True, max(MAX_UDP_PLAIN, size)
    # Lower-casing the whole wire name is safe: label lengths are <= 63, below b"A" (65).
    key = data[HEADER_LEN:qname_end].lower() + data[qname_end:qname_end + 4]
    return Query(id=(data[0] << 8) | data[1], rd=bool(data[2] & RD),
                 question=data[HEADER_LEN:qname_end + 4], key=key, qname_end=qname_end,
                 qtype=qtype, qclass=qclass, edns=edns, udp_size=min(udp_size, MAX_TCP),
                 edns_version=version)


def header(qid: int, flags: int, rcode: int, qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    """A header: flags is the high flag byte (QR, opcode, AA, TC, RD); RA is always set."""
    return _H.pack(qid, flags, RA | (rcode & 0x0F), qd, an, ns, ar)


def opt_record(rcode: int = NOERROR) -> bytes:
    """Our OPT record: payload size we accept, the upper bits of an extended rcode."""
    return b"\x00" + struct.pack("!HHBBHH", OPT, EDNS_ADVERTISED, rcode >> 4, 0, 0, 0)


# --- names ---


def encode_name(name: str) -> bytes:
    """'web.appnet' (trailing dot optional) -> wire labels. Raises ValueError if invalid."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"invalid DNS label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"DNS name too long: {name!r}")
    return bytes(out)


def decode_name(wire: bytes) -> str:
    """Uncompressed wire labels -> 'a.b.c' (no trailing dot). Non-ASCII bytes are escaped."""
    labels = []
    pos = 0
    while pos < len(wire) and wire[pos]:
        length = wire[pos]
        labels.append(wire[pos + 1:pos + 1 + length].decode("ascii", "backslashreplace"))
        pos += length + 1
    return ".".join(labels)


def reverse_name(ip: str) -> str:
    """'10.0.1.3' -> '3.1.0.10.in-addr.arpa'."""
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return ".".join(reversed(parts)) + ".in-addr.arpa"  # IPv4: the common case, fast
    return ipaddress.ip_address(ip).reverse_pointer


# --- resource records (the owner is always the question name: a pointer to offset 12) ---

POINTER_TO_QNAME = b"\xc0\x0c"


def rr_a(ip: str, ttl: int) -> bytes:
    return POINTER_TO_QNAME + struct.pack("!HHIH", A, IN, ttl, 4) + ipaddress.IPv4Address(
        ip).packed


def rr_ptr(target: str, ttl: int) -> bytes:
    rdata = encode_name(target)
    return POINTER_TO_QNAME + struct.pack("!HHIH", PTR, IN, ttl, len(rdata)) + rdata


def rr_srv(priority: int, weight: int, port: int, target: str, ttl: int) -> bytes:
    rdata = struct.pack("!HHH", priority, weight, port) + encode_name(target)
    return POINTER_TO_QNAME + struct.pack("!HHIH", SRV, IN, ttl, len(rdata)) + rdata


def rr_a_named(owner: str, ip: str, ttl: int) -> bytes:
    """An A record with its own owner name (additional section of an SRV answer)."""
    return encode_name(owner) + struct.pack("!HHIH", A, IN, ttl, 4) + ipaddress.IPv4Address(
        ip).packed
