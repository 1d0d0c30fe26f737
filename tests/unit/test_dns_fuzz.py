"""Fuzzing the core: whatever bytes arrive, it answers, drops or forwards; it never raises, and
what it sends back is a DNS message with the query's id."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.dns import core, wire
from tests.unit.dns_views import tables

TABLES = tables()
ASKERS = [TABLES.asker(a) for a in ("client", "bclient", "both", "inner", "nosuch")]
NAMES = [b"\x03web", b"\x05tasks\x03web", b"\x02rr", b"\x03www\x06appnet", b"\x02db",
         b"\xc0\x0c", b"\x03web\xc0\x0c", b"\x3f" + b"a" * 63, b"\x02WE", b""]


def check(data: bytes, tcp: bool) -> None:
    for asker in ASKERS:
        out = core.respond(data, asker, tcp)
        if out is None or isinstance(out, core.Forward):
            continue
        assert isinstance(out, bytes) and len(out) >= wire.HEADER_LEN
        assert out[:2] == data[:2]
        assert out[2] & wire.QR
        assert len(out) <= (wire.MAX_TCP if tcp else max(512, len(out) if out[2] & wire.TC
                                                           else 65535))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(data: bytes, tcp: bool) -> None:
    check(data, tcp)


@st.composite
def plausible(draw: st.DrawFn) -> bytes:
    """Mostly-valid queries with the parts that break parsers: counts, labels, pointers, OPT."""
    head = struct.pack("!HBBHHHH", draw(st.integers(0, 65535)),
                       draw(st.sampled_from([0x01, 0x00, 0x81, 0x29, 0x11])),
                       draw(st.integers(0, 255)),
                       draw(st.sampled_from([1, 1, 1, 0, 2, 65535])),
                       draw(st.sampled_from([0, 0, 0, 1, 65535])),
                       draw(st.sampled_from([0, 0, 0, 1])),
                       draw(st.sampled_from([0, 1, 1, 2, 65535])))
    name = b"".join(draw(st.lists(st.sampled_from(NAMES), max_size=4))) + b"\x00"
    qtype = struct.pack("!HH", draw(st.sampled_from([1, 28, 33, 12, 255, 65, 0])),
                        draw(st.sampled_from([1, 1, 3, 255])))
    opt = draw(st.sampled_from([b"", b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
                                b"\x00\x00\x29\x00\x10\x00\x01\x00\x00\x00\x00",
                                b"\x00\x00\x29\xff\xff\x00\x00\x00\x00\x00\x04\x00\x0a",
                                b"\xc0\x0c\x00\x29"]))
    data = head + name + qtype + opt
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


@settings(max_examples=2500, suppress_health_check=[HealthCheck.too_slow])
@given(plausible(), st.booleans())
def test_plausible_queries(data: bytes, tcp: bool) -> None:
    check(data, tcp)
    out = core.respond(data, ASKERS[0], tcp)
    if isinstance(out, bytes):
        dns.message.from_wire(out, question_only=True)  # our answers always parse


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["web", "WEB", "web.appnet", "www.appnet", "web.1.tweb1", "db", "nosuch",
                        "11.1.0.10.in-addr.arpa", "_80._tcp.web"]),
       st.sampled_from(["A", "AAAA", "PTR", "SRV", "TXT"]),
       st.sampled_from([False, 0]), st.sampled_from([512, 1232, 4096, 65535]), st.booleans(),
       st.booleans())
def test_fast_path_agrees_with_the_full_path(name: str, rdtype: str, edns: bool | int,
                                             payload: int, rd: bool, tcp: bool) -> None:
    """Answers from ready bytes are exactly what the full parse would give (no rotating names
    here: their order changes on purpose)."""
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    data = q.to_wire()
    for asker in ASKERS:
        core.respond(data, asker, tcp)  # builds the answer, so the next ask takes the fast path
        assert core.respond(data, asker, tcp) == core._respond(data, asker, tcp)
