"""The ClientHello parser: real hellos from Python's ssl, split every way, and fuzz."""

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.mesh import sni
from shoal.mesh.sni import DONE, INVALID, MAX_HELLO, MORE, parse_client_hello


def client_hello(server_name: str | None, tls13_only: bool = False) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = client_hello("Secure.Example.org")


def resplit_records(data: bytes, size: int) -> bytes:
    """The same handshake message carried in records of at most `size` bytes."""
    assert data[0] == 22
    length = int.from_bytes(data[3:5], "big")
    message, rest = data[5 : 5 + length], data[5 + length :]
    out = b""
    for i in range(0, len(message), size):
        piece = message[i : i + size]
        out += data[:3] + len(piece).to_bytes(2, "big") + piece
    return out + rest


def test_sni_from_a_real_hello():
    hello = parse_client_hello(HELLO)
    assert (hello.status, hello.sni) == (DONE, "secure.example.org")
    assert parse_client_hello(client_hello("a.test", tls13_only=True)).sni == "a.test"


def test_no_sni():
    hello = parse_client_hello(client_hello(None))
    assert (hello.status, hello.sni) == (DONE, None)


@pytest.mark.parametrize("size", [1, 7, 100, 16384])
def test_hello_split_over_records_and_reads(size):
    data = resplit_records(HELLO, size)
    for cut in range(0, len(data), max(1, len(data) // 40)):
        assert parse_client_hello(data[:cut]).status == MORE
    assert parse_client_hello(data).sni == "secure.example.org"


@pytest.mark.parametrize("data,reason", [
    (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake"),
    (b"\x16\x02\x00\x00\x05xxxxx", "version"),
    (b"\x16\x03\x01\x00\x00", "record length"),
    (b"\x16\x03\x01\xff\xff", "record length"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "too large"),
])
def test_invalid(data, reason):
    hello = parse_client_hello(data)
    assert hello.status == INVALID and reason in hello.reason


def test_what_a_slow_client_can_make_us_hold_is_bounded():
    # Records that never complete the message: invalid once past MAX_HELLO, not MORE forever.
    record = b"\x16\x03\x01\x40\x00" + b"\x01\x00\xff\xff" + b"\0" * (0x4000 - 4)
    filler = b"\x16\x03\x01\x40\x00" + b"\0" * 0x4000
    data = record + filler * 5
    assert parse_client_hello(data).status == INVALID


def test_alerts_are_fatal_tls_alerts():
    for alert in (sni.ALERT_UNRECOGNIZED_NAME, sni.ALERT_DECODE_ERROR):
        assert alert[:3] == b"\x15\x03\x01" and alert[5] == 2 and len(alert) == 7


@given(st.binary(max_size=600))
@settings(max_examples=1000)
def test_fuzz_random_bytes(data):
    hello = parse_client_hello(data)
    assert hello.status in (MORE, DONE, INVALID)


@given(st.lists(st.tuples(st.integers(0, len(HELLO) - 1), st.integers(0, 255)), max_size=6))
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_real_hello(mutations):
    data = bytearray(HELLO)
    for pos, value in mutations:
        data[pos] = value
    hello = parse_client_hello(bytes(data))
    assert hello.status in (MORE, DONE, INVALID)
    if hello.sni is not None:
        assert hello.sni.isascii() and len(hello.sni) <= 253


@given(st.integers(0, len(HELLO)), st.binary(max_size=50))
def test_fuzz_truncated_or_extended(cut, extra):
    hello = parse_client_hello(HELLO[:cut] + extra)
    assert hello.status in (MORE, DONE, INVALID)
    assert len(HELLO) <= MAX_HELLO
