"""The resolver's core: query bytes and asker in, answer bytes (or a forward) out. No I/O.

    respond(data, asker, tcp) -> bytes      an answer to send back
                              -> Forward    not a cluster name: ask the upstreams (forward.py)
                              -> None       drop it (too short to answer, or not a query)

A cluster name is answered from the asker's scope, with ready bytes: the header is packed, the
question is copied from the query (so the case the client used comes back, as 0x20-randomising
clients expect), and the records follow. A UDP answer larger than the client takes (512 bytes,
or its EDNS0 size) is replaced by an empty one with TC set, and the client asks again over TCP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shoal.dns import wire
from shoal.dns.scope import A_RR_LEN
from shoal.dns.tables import Asker, Upstream

OPCODE_MASK = 0x78
_OPT = wire.opt_record()


@dataclass(frozen=True, slots=True)
class Forward:
    """Ask the upstreams, in order; `query` is the client's packet as it came."""

    query: bytes
    question: bytes
    edns: bool
    upstreams: tuple[Upstream, ...]


_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_OPT_TYPE = b"\x00\x29"


def respond(data: bytes, asker: Asker, tcp: bool = False) -> bytes | Forward | None:
    # The fast path: a plain query for a name whose answer is built already. It finds the
    # name's end by its first zero byte, which is only right for a name with no zero byte in a
    # label; but then the lookup key matches a known (valid) name byte for byte, so a hit
    # proves the question well-formed. Anything else takes the full path below.
    scope = asker.scope
    done = scope.replies.get(data[2:])
    if done is not None:
        return data[:2] + done  # this very query was answered before: only the id differs
    n = len(data)
    if n > 16 and not data[2] & 0xF8 and data[4:10] == _PLAIN_COUNTS and not data[10] \
            and data[11] < 2:
        end = data.find(0, 12) + 5  # just past the question's type and class
        if 16 < end <= n:
            answer = scope.cache.get(data[12:end - 4].lower() + data[end - 4:end])
            if answer is not None:
                edns = data[11]
                limit = wire.MAX_UDP_PLAIN
                if edns:
                    if (end + 11 > n or data[end] or data[end + 1:end + 3] != _OPT_TYPE
                            or data[end + 6]  # EDNS version other than 0: full path
                            or end + 11 + ((data[end + 9] << 8) | data[end + 10]) > n):
                        return _respond(data, asker, tcp)
                    limit = max(limit, (data[end + 3] << 8) | data[end + 4])
                records = answer.body
                if answer.rotate:
                    start = (next(scope.turn) % answer.an) * A_RR_LEN
                    records = records[start:start + answer.rr_len]
                out = (data[:2] + answer.heads[((data[2] & 1) << 1) | edns] + data[12:end]
                       + records + (_OPT if edns else b""))
                if len(out) <= limit:
                    if not answer.rotate:
                        scope.remember(data[2:], out[2:])
                    return out
                if tcp:
                    return out
    return _respond(data, asker, tcp)


def _respond(data: bytes, asker: Asker, tcp: bool) -> bytes | Forward | None:
    """The full path: every check, every case (errors, truncation, first asks, forwards)."""
    if len(data) < wire.HEADER_LEN:
        return None  # not even an id to answer to
    flags = data[2]
    if flags & wire.QR:
        return None  # a response: answering it could start a loop between two servers
    if flags & OPCODE_MASK:
        return _error(data, wire.NOTIMP)  # NOTIFY, UPDATE, IQUERY, STATUS
    try:
        q = wire.parse_query(data)
    except wire.FormatError:
        return _error(data, wire.FORMERR)
    if q.edns_version:
        # RFC 6891 6.1.3: a version we do not speak gets BADVERS, carried in our OPT.
        return (wire.header(q.id, _flags(q), wire.BADVERS, 1, 0, 0, 1) + q.question
                + wire.opt_record(wire.BADVERS))
    scope = asker.scope
    answer = scope.lookup(q.key)
    if answer is not None:
        flags = wire.QR | wire.AA | (wire.RD if q.rd else 0)
        opt = _OPT if q.edns else b""
        out = (wire.header(q.id, flags, wire.NOERROR, 1, answer.an, 0, answer.ar + q.edns)
               + q.question + answer.records(next(scope.turn)) + opt)
        if len(out) > (wire.MAX_TCP if tcp else q.udp_size):
            out = wire.header(q.id, flags | wire.TC, wire.NOERROR, 1, 0, 0, q.edns) \
                + q.question + opt
        return out
    if not asker.may_forward:
        return reply_rcode(q.id, q.rd, q.question, q.edns, wire.REFUSED)
    if not asker.upstreams:
        return reply_rcode(q.id, q.rd, q.question, q.edns, wire.SERVFAIL)
    return Forward(data, q.question, q.edns, asker.upstreams)


def _flags(q: wire.Query) -> int:
    return wire.QR | (wire.RD if q.rd else 0)


def _error(data: bytes, rcode: int) -> bytes:
    """An error with no question echoed: the id, the opcode and RD of the query."""
    flags = wire.QR | (data[2] & (OPCODE_MASK | wire.RD))
    return data[:2] + bytes([flags, wire.RA | rcode]) + b"\x00" * 8


def reply_rcode(qid: int, rd: bool, question: bytes, edns: bool, rcode: int) -> bytes:
    return (wire.header(qid, wire.QR | (wire.RD if rd else 0), rcode, 1, 0, 0, int(edns))
            + question + (_OPT if edns else b""))


def failed(fwd: Forward, rcode: int = wire.SERVFAIL) -> bytes:
    """The answer when no upstream gave one (SERVFAIL) or forwarding is refused (REFUSED)."""
    return reply_rcode(struct.unpack_from("!H", fwd.query)[0], bool(fwd.query[2] & wire.RD),
                       fwd.question, fwd.edns, rcode)


# --- upstream replies (pure helpers for forward.py) ---


def with_id(packet: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + packet[2:]


def upstream_rcode(reply: bytes, qid: int, question: bytes) -> int | None:
    """The rcode of an upstream's reply to our query `qid`, or None if it is not one: a reply
    must be a response, carry our id and repeat our question (RFC 5452: a spoofed or late
    reply to something else is ignored, not passed on)."""
    if len(reply) < wire.HEADER_LEN + len(question) or not reply[2] & wire.QR:
        return None
    if (reply[0] << 8 | reply[1]) != qid:
        return None
    echoed = reply[wire.HEADER_LEN:wire.HEADER_LEN + len(question)]
    if echoed[-4:] != question[-4:] or echoed[:-4].lower() != question[:-4].lower():
        return None
    return reply[3] & 0x0F
