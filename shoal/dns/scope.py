"""What one asker can see: the names of the networks it is on, merged, with answers as bytes.

Tasks on the same set of networks share one Scope. An answer is built the first time a name is
asked after a change and kept as ready wire bytes (answer records whose owner is a pointer to
the question, so the question can be copied from the query with its case); the core only adds
a header. A rotating answer (dnsrr, tasks.) keeps its A records twice over, in a random order
drawn at build time: each query takes the next window of N records, so every task comes first
in turn, at the cost of one slice.
"""

from __future__ import annotations

import itertools
import random
import struct

from shoal.dns import wire
from shoal.dns.records import NetworkNames, SrvTarget

MAX_REPLIES = 8192
A_RR_LEN = 16  # pointer (2) + type, class, ttl, rdlength (10) + IPv4 (4)
CACHED_TYPES = frozenset({wire.A, wire.AAAA, wire.PTR, wire.SRV, wire.MX, wire.TXT, wire.ANY,
                          wire.CNAME, wire.NS, wire.SOA})


class Answer:
    """A ready NOERROR answer: `an` answer records (then `ar` additional ones) in `body`, and
    bytes 2-11 of its header for each (RD, EDNS0) of a query, so that the core only joins."""

    __slots__ = ("an", "ar", "body", "rotate", "heads", "rr_len")

    def __init__(self, an: int, ar: int, body: bytes, rotate: bool = False) -> None:
        self.an, self.ar, self.body = an, ar, body
        self.rotate = rotate  # body holds the an A records twice; answer with a window of them
        self.rr_len = an * A_RR_LEN
        # index: 2 * RD + EDNS0 (an OPT record of ours follows in the additional section)
        self.heads = tuple(struct.pack("!BBHHHH", wire.QR | wire.AA | rd, wire.RA, 1, an, 0,
                                       ar + edns) for rd in (0, 1) for edns in (0, 1))

    def records(self, turn: int) -> bytes:
        if not self.rotate:
            return self.body
        start = (turn % self.an) * A_RR_LEN
        return self.body[start:start + self.rr_len]


NODATA = Answer(0, 0, b"")


class Scope:
    def __init__(self, tables: tuple[NetworkNames, ...]) -> None:
        self.tables = tables
        self.cache: dict[bytes, Answer] = {}
        # Whole replies (less the id) by query (less the id), for answers that do not rotate:
        # clients repeat the same query bytes, so most queries are one lookup and one join.
        self.replies: dict[bytes, bytes] = {}
        self.turn = itertools.count()

    def clear(self) -> None:
        """Forget every built answer (the tables changed under them)."""
        self.cache.clear()
        self.replies.clear()

    def remember(self, query: bytes, reply: bytes) -> None:
        if len(self.replies) >= MAX_REPLIES:
            self.replies.clear()  # bounded: a client varying its queries only resets it
        self.replies[query] = reply

    def lookup(self, key: bytes) -> Answer | None:
        """key: lower-case wire name + type + class. None: not a cluster name here."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        qtype, qclass = struct.unpack_from("!HH", key, len(key) - 4)
        if qclass not in (wire.IN, wire.ANY):
            return None
        answer = self._build(wire.decode_name(key[:-4]), qtype)
        if answer is not None and qtype in CACHED_TYPES:
            # Unknown names are never cached: a flood of random names must not grow memory.
            self.cache[key] = answer
        return answer

    def _build(self, name: str, qtype: int) -> Answer | None:
        addrs: list[str] = []
        ttl: int | None = None
        rotate = False
        srv: list[SrvTarget] = []
        ptr: list[tuple[str, int]] = []
        known = False
        for t in self.tables:
            found = t.addrs.get(name)
            if found is not None:
                known = True
                addrs.extend(a for a in found if a not in addrs)
                ttl = t.ttl[name] if ttl is None else min(ttl, t.ttl[name])
                rotate = rotate or name in t.shuffle
            if name in t.srv:
                known = True
                srv.extend(t.srv[name])
            if name in t.ptr:
                known = True
                ptr.append(t.ptr[name])
        if not known:
            return None
        if qtype in (wire.A, wire.ANY) and addrs:
            return _a_answer(addrs, ttl or 0, rotate)
        if qtype in (wire.SRV, wire.ANY) and srv:
            return _srv_answer(srv)
        if qtype in (wire.PTR, wire.ANY) and ptr:
            return Answer(len(ptr), 0, b"".join(wire.rr_ptr(p, t) for p, t in ptr))
        return NODATA  # a known name, another type: NOERROR, no answer, never forwarded


def _a_answer(addrs: list[str], ttl: int, rotate: bool) -> Answer:
    records = [wire.rr_a(ip, ttl) for ip in addrs]
    if rotate and len(records) > 1:
        random.shuffle(records)
        return Answer(len(records), 0, b"".join(records) * 2, rotate=True)
    return Answer(len(records), 0, b"".join(records))


def _srv_answer(targets: list[SrvTarget]) -> Answer:
    answers = b"".join(wire.rr_srv(0, 10, t.port, t.target, t.ttl) for t in targets)
    seen: dict[str, SrvTarget] = {}
    for t in targets:
        seen.setdefault(t.target, t)
    extra = b"".join(wire.rr_a_named(t.target, t.ip, t.ttl) for t in seen.values())
    return Answer(len(targets), len(seen), answers + extra)
