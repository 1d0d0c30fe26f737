"""The pure resolver core: a hand-made view, queries as a client builds them (dnspython), the
answers it would see. Table-driven, as CoreDNS tests its plugins."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from shoal.dns import core, wire
from shoal.dns.records import Ttls
from tests.unit.dns_views import UPSTREAM, addrs, ask, base_view, rcode, tables

# (asker, name, type) -> sorted A addresses
A_ANSWERS = [
    ("client", "web", ["10.0.1.2"]),  # vip mode: the VIP on the asker's network
    ("bclient", "web", ["10.0.2.2"]),  # the same service seen from the other network
    ("both", "web", ["10.0.1.2", "10.0.2.2"]),  # on both networks: both VIPs
    ("client", "tasks.web", ["10.0.1.11", "10.0.1.12"]),  # healthy tasks only (web.3 is not)
    ("bclient", "tasks.web", ["10.0.2.11", "10.0.2.12"]),
    ("client", "www", ["10.0.1.2"]),  # alias
    ("client", "tasks.www", ["10.0.1.11", "10.0.1.12"]),
    ("client", "web.1", ["10.0.1.11"]),  # task name
    ("client", "web.1.tweb1", ["10.0.1.11"]),  # task name with id
    ("client", "rr", ["10.0.1.21", "10.0.1.22"]),  # dnsrr: task addresses
    ("client", "tasks.rr", ["10.0.1.21", "10.0.1.22"]),
    ("client", "web.appnet", ["10.0.1.2"]),  # <name>.<network>
    ("client", "tasks.web.appnet", ["10.0.1.11", "10.0.1.12"]),
    ("client", "web.1.tweb1.appnet", ["10.0.1.11"]),
    ("both", "web.backnet", ["10.0.2.2"]),
    ("bclient", "db", ["10.0.2.3"]),
    ("client", "WeB.", ["10.0.1.2"]),  # case-insensitive, trailing dot optional
    ("client", "TASKS.Web.AppNet", ["10.0.1.11", "10.0.1.12"]),
    ("inner", "priv", ["10.0.3.2"]),
]


@pytest.mark.parametrize(("asker", "name", "want"), A_ANSWERS)
def test_a_answers(asker: str, name: str, want: list[str]) -> None:
    msg = ask(tables(), asker, name)
    assert rcode(msg) == "NOERROR"
    assert addrs(msg) == want
    assert msg.flags & dns.flags.AA  # type: ignore[union-attr]


@pytest.mark.parametrize(("asker", "name"), [
    ("client", "db"),  # db is only on backnet
    ("client", "web.backnet"),  # a name of a network the asker is not on
    ("client", "web.1.tweb1.backnet"),
    ("bclient", "rr"),
    ("bclient", "www"),  # the alias is on appnet only
    ("client", "web.3"),  # a task that does not run has no name
    ("client", "priv"),
])
def test_scoping_hides_other_networks(asker: str, name: str) -> None:
    assert isinstance(ask(tables(), asker, name), core.Forward)


def test_question_case_comes_back_as_asked() -> None:
    msg = ask(tables(), "client", "wEb.AppNET")
    assert str(msg.question[0].name) == "wEb.AppNET."  # type: ignore[union-attr]
    assert str(msg.answer[0].name) == "wEb.AppNET."  # type: ignore[union-attr]


def test_ttls_vip_long_tasks_short() -> None:
    t = tables(ttls=Ttls(vip=300, task=2))
    assert ask(t, "client", "web").answer[0].ttl == 300  # type: ignore[union-attr]
    assert ask(t, "client", "tasks.web").answer[0].ttl == 2  # type: ignore[union-attr]
    assert ask(t, "client", "rr").answer[0].ttl == 2  # type: ignore[union-attr]
    assert ask(t, "client", "web.1").answer[0].ttl == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "NS", "SOA", "CNAME", "HTTPS"])
def test_other_types_of_a_known_name_are_empty_not_forwarded(rdtype: str) -> None:
    msg = ask(tables(), "client", "web", rdtype)
    assert rcode(msg) == "NOERROR" and msg.answer == []  # type: ignore[union-attr]


def test_ptr_for_task_addresses_and_vips_in_scope_only() -> None:
    t = tables()
    msg = ask(t, "client", "11.1.0.10.in-addr.arpa", "PTR")
    assert [str(r) for r in msg.answer[0]] == ["web.1.tweb1.appnet."]  # type: ignore[union-attr]
    msg = ask(t, "client", "2.1.0.10.in-addr.arpa", "PTR")
    assert [str(r) for r in msg.answer[0]] == ["web.appnet."]  # type: ignore[union-attr]
    # backnet's addresses are not the asker's business
    assert isinstance(ask(t, "client", "11.2.0.10.in-addr.arpa", "PTR"), core.Forward)
    msg = ask(t, "bclient", "11.2.0.10.in-addr.arpa", "PTR")
    assert [str(r) for r in msg.answer[0]] == ["web.1.tweb1.backnet."]  # type: ignore[union-attr]


def test_srv_from_service_ports() -> None:
    t = tables()
    for name in ("_80._tcp.web", "_http._tcp.web", "_80._tcp.web.appnet", "_80._TCP.WWW"):
        msg = ask(t, "client", name, "SRV")
        assert rcode(msg) == "NOERROR", name
        srv = [(r.port, str(r.target)) for r in msg.answer[0]]  # type: ignore[union-attr]
        assert srv == [(80, "web.appnet.")], name
        glue = [(str(rr.name), r.address) for rr in msg.additional  # type: ignore[union-attr]
                for r in rr]
        assert glue == [("web.appnet.", "10.0.1.2")]
    # dnsrr: one SRV per healthy task, each target a task name on the network
    msg = ask(t, "client", "_53._udp.rr", "SRV")
    got = sorted((r.port, str(r.target)) for r in msg.answer[0])  # type: ignore[union-attr]
    assert got == [(53, "rr.1.trr1.appnet."), (53, "rr.2.trr2.appnet.")]
    # the SRV target resolves
    assert addrs(ask(t, "client", "rr.1.trr1.appnet")) == ["10.0.1.21"]
    assert isinstance(ask(t, "client", "_81._tcp.web", "SRV"), core.Forward)
    assert rcode(ask(t, "client", "_80._tcp.web", "A")) == "NOERROR"  # known name, no A


def test_dnsrr_and_tasks_answers_rotate() -> None:
    t = tables()
    firsts = set()
    for _ in range(10):
        msg = ask(t, "client", "tasks.web")
        firsts.add(msg.answer[0][0].address)  # type: ignore[union-attr]
        assert addrs(msg) == ["10.0.1.11", "10.0.1.12"]
    assert firsts == {"10.0.1.11", "10.0.1.12"}


def test_unknown_names_forward_to_the_right_upstreams() -> None:
    t = tables()
    fwd = ask(t, "client", "www.outside.test")
    assert isinstance(fwd, core.Forward) and fwd.upstreams == (UPSTREAM,)
    # A task's own --dns servers replace the node's; loopback ones are dropped.
    fwd = ask(t, "own", "www.outside.test")
    assert isinstance(fwd, core.Forward) and fwd.upstreams == (("192.0.2.53", 53),)


def test_internal_networks_never_forward() -> None:
    msg = ask(tables(), "inner", "www.outside.test")
    assert rcode(msg) == "REFUSED"


def test_no_upstream_is_servfail() -> None:
    t = tables()
    t.upstreams = ()
    t.askers.clear()
    assert rcode(ask(t, "client", "www.outside.test")) == "SERVFAIL"


def test_unknown_asker_is_refused() -> None:
    assert rcode(ask(tables(), "nosuch", "web")) == "REFUSED"


# --- sizes: 512 without EDNS0, the EDNS0 size when given, 65535 over TCP ---


def big_view(n: int = 40):
    view = base_view()
    from tests.unit.dns_views import endpoint

    for i in range(n):
        view["endpoints"][f"big{i}"] = endpoint(f"big{i}", f"rr.{100 + i}", "srr",
                                                {"n1": f"10.0.1.{100 + i}"})
    return view


def test_udp_truncates_at_512_without_edns() -> None:
    t = tables(big_view())
    msg = ask(t, "client", "tasks.rr", use_edns=False)
    assert msg.flags & dns.flags.TC and msg.answer == []  # type: ignore[union-attr]
    msg = ask(t, "client", "tasks.rr", tcp=True, use_edns=False)
    assert len(addrs(msg)) == 42 and not msg.flags & dns.flags.TC  # type: ignore[union-attr]


def test_udp_uses_the_edns_size() -> None:
    t = tables(big_view())
    msg = ask(t, "client", "tasks.rr", use_edns=0, payload=1232)
    assert len(addrs(msg)) == 42 and msg.edns == 0  # type: ignore[union-attr]
    msg = ask(t, "client", "tasks.rr", use_edns=0, payload=600)
    assert msg.flags & dns.flags.TC  # type: ignore[union-attr]
    # A small answer fits in 512 either way
    assert addrs(ask(t, "client", "web", use_edns=False)) == ["10.0.1.2"]


def test_rd_is_echoed_and_ra_set() -> None:
    msg = ask(tables(), "client", "web")
    assert msg.flags & dns.flags.RD and msg.flags & dns.flags.RA  # type: ignore[union-attr]


# --- bad input ---

GOOD = dns.message.make_query("web", "A").to_wire()


def raw(data: bytes) -> bytes | core.Forward | None:
    return core.respond(data, tables().asker("client"))


def rcode_of(out: object) -> int:
    assert isinstance(out, bytes)
    return out[3] & 0x0F


@pytest.mark.parametrize("data", [b"", b"\x00", GOOD[:11]])
def test_too_short_is_dropped(data: bytes) -> None:
    assert raw(data) is None


def test_responses_are_dropped() -> None:
    assert raw(GOOD[:2] + bytes([GOOD[2] | 0x80]) + GOOD[3:]) is None


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


QUESTION = wire.encode_name("web") + b"\x00\x01\x00\x01"


@pytest.mark.parametrize(("data", "want"), [
    (header(qd=0), wire.FORMERR),
    (header(qd=2) + QUESTION * 2, wire.FORMERR),
    (header(qd=65535) + QUESTION, wire.FORMERR),
    (header(an=1) + QUESTION, wire.FORMERR),
    (header(ar=40000) + QUESTION, wire.FORMERR),
    (header() + QUESTION[:-2], wire.FORMERR),  # question cut short
    (header() + b"\x03web", wire.FORMERR),  # name runs off the end
    (header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer to itself: a loop
    (header() + b"\x03web\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),
    (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", wire.FORMERR),  # label > 63
    (header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4 + b"\x00\x00\x01\x00\x01",
     wire.FORMERR),  # name > 255
    (header(ar=1) + QUESTION + b"\x00\x00\x01\x00\x01", wire.FORMERR),  # additional not OPT
    (header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x09", wire.FORMERR),
    (header(flags=0x2800) + QUESTION, wire.NOTIMP),  # opcode UPDATE
])
def test_malformed_queries_get_formerr(data: bytes, want: int) -> None:
    out = raw(data)
    assert rcode_of(out) == want
    assert out[:2] == b"\x12\x34"  # type: ignore[index]


def test_unknown_edns_version_gets_badvers() -> None:
    msg = dns.message.make_query("web", "A", use_edns=1)
    out = core.respond(msg.to_wire(), tables().asker("client"))
    assert isinstance(out, bytes)
    reply = dns.message.from_wire(out)
    assert reply.rcode() == wire.BADVERS


def test_key_is_not_fooled_by_types_that_look_like_letters() -> None:
    # type 65 (HTTPS) is b"\x00A": lower-casing the whole question would turn it into 97.
    t = tables()
    msg = ask(t, "client", "web", "HTTPS")
    assert rcode(msg) == "NOERROR" and msg.answer == []  # type: ignore[union-attr]
    msg = ask(t, "client", "web", dns.rdatatype.to_text(97))
    assert rcode(msg) == "NOERROR" and msg.answer == []  # type: ignore[union-attr]


def test_upstream_reply_checks() -> None:
    q = dns.message.make_query("www.outside.test", "A")
    q.id = 4242
    reply = dns.message.make_response(q)
    reply.set_rcode(3)
    data = reply.to_wire()
    question = q.to_wire()[12:]
    assert core.upstream_rcode(data, 4242, question) == wire.NXDOMAIN
    assert core.upstream_rcode(data, 4243, question) is None  # not our id
    other = dns.message.make_query("evil.test", "A").to_wire()[12:]
    assert core.upstream_rcode(data, 4242, other) is None  # not our question
    assert core.upstream_rcode(q.to_wire(), 4242, question) is None  # not a response
