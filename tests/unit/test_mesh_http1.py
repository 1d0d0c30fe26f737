"""The mesh's HTTP/1.1 core: request heads in, route key + framing + backend head out."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh import http1
from shoal.mesh.errors import HttpError
from shoal.mesh.http1 import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UPGRADE,
    parse_request,
    parse_response,
)

IP = b"10.0.0.9"


def req(*lines: str) -> http1.Request:
    return parse_request("\r\n".join(lines).encode(), IP)


def status_of(*lines: str) -> int:
    with pytest.raises(HttpError) as info:
        req(*lines)
    return info.value.status


def test_simple_get_head_for_the_backend():
    r = req("GET /a?b=1 HTTP/1.1", "Host: App.Example.org.:8080", "Accept: */*")
    assert r.host == "app.example.org"
    assert (r.version, r.body, r.keep_alive, r.upgrade, r.is_head) == (11, BODY_NONE, True,
                                                                        False, False)
    assert r.head == (b"GET /a?b=1 HTTP/1.1\r\nHost: App.Example.org.:8080\r\nAccept: */*\r\n"
                      b"X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
                      b"X-Forwarded-Host: App.Example.org.:8080\r\n\r\n")


@pytest.mark.parametrize("host,key", [
    ("a.test", "a.test"), ("A.TEST", "a.test"), ("a.test.", "a.test"), ("a.test:80", "a.test"),
    ("a.test.:8080", "a.test"), ("[::1]:80", "[::1]"), ("10.0.0.1:80", "10.0.0.1"),
    ("  a.test  ", "a.test"), ("a.test:", "a.test"),
])
def test_host_normalisation(host, key):
    assert req("GET / HTTP/1.1", f"Host: {host}").host == key


@pytest.mark.parametrize("lines,status", [
    (("GET / HTTP/1.1",), 400),  # no Host
    (("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
    (("GET / HTTP/1.1", "Host: a b"), 400),
    (("GET / HTTP/1.1", "Host: a:99999x"), 400),
    (("GET / HTTP/1.1", "Host: [::1"), 400),
    (("GET / HTTP/1.1", "Host: a..b"), 400),
    (("GET / HTTP/2.0", "Host: a"), 505),
    (("GET / HTTP/1.1 x", "Host: a"), 400),
    (("GET  / HTTP/1.1", "Host: a"), 400),
    (("GET / http/1.1", "Host: a"), 400),
    (("CONNECT a:443 HTTP/1.1", "Host: a"), 405),
    (("GET ftp://a/ HTTP/1.1", "Host: a"), 400),
    (("GET http://u@a/ HTTP/1.1", "Host: a"), 400),
    (("GET / HTTP/1.1", "Host: a", "X-A: 1", " folded"), 400),  # obs-fold
    (("GET / HTTP/1.1", "Host : a"), 400),  # whitespace before the colon
    (("GET / HTTP/1.1", "Host: a", "no colon"), 400),
    (("GET / HTTP/1.1", "Host: a", "X: a\nb"), 400),  # bare LF
    (("GET / HTTP/1.1", "Host: a", "X: a\rb"), 400),  # bare CR
    (("GET / HTTP/1.1", "Host: a", "X: a\0b"), 400),
])
def test_bad_heads(lines, status):
    assert status_of(*lines) == status


@pytest.mark.parametrize("framing", [
    ("Content-Length: 5", "Transfer-Encoding: chunked"),
    ("Transfer-Encoding: chunked", "Content-Length: 5"),
    ("Content-Length: 5", "Content-Length: 5"),
    ("Content-Length: 5", "Content-Length: 6"),
    ("Content-Length: 5, 5",),
    ("Content-Length: +5",),
    ("Content-Length: -1",),
    ("Content-Length: 0x10",),
    ("Content-Length: 1234567890123456789",),
    ("Transfer-Encoding: gzip",),
    ("Transfer-Encoding: chunked, gzip",),
    ("Transfer-Encoding: chunked, chunked",),
    ("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
    ("Transfer-Encoding: xchunked",),
    ("Transfer-Encoding: chunked,",),
    ("Transfer-Encoding:\tchunked\x0b",),
])
def test_smuggling_framings_are_refused(framing):
    assert status_of("POST / HTTP/1.1", "Host: a", *framing) == 400


def test_transfer_encoding_in_http10_is_refused():
    assert status_of("POST / HTTP/1.0", "Host: a", "Transfer-Encoding: chunked") == 400


def test_framing_is_normalised_for_the_backend():
    r = req("POST / HTTP/1.1", "Host: a", "transfer-ENCODING:  Gzip ,chunked ")
    assert r.body == BODY_CHUNKED
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in r.head
    assert b"ENCODING" not in r.head
    r = req("PUT / HTTP/1.1", "Host: a", "content-length:  00012")
    assert (r.body, r.length) == (BODY_LENGTH, 12)
    assert b"\r\nContent-Length: 12\r\n" in r.head and b"00012" not in r.head
    r = req("POST / HTTP/1.1", "Host: a")
    assert r.body == BODY_NONE and b"\r\nContent-Length: 0\r\n" in r.head


def test_forwarded_headers_append_and_replace():
    r = req("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.2.3.4", "X-Forwarded-For: 5.6.7.8",
            "X-Forwarded-Proto: https", "X-Forwarded-Host: evil")
    assert b"\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 10.0.0.9\r\n" in r.head
    assert r.head.count(b"X-Forwarded-Proto") == 1 and b"X-Forwarded-Proto: http\r\n" in r.head
    assert b"evil" not in r.head and b"X-Forwarded-Host: a\r\n" in r.head


def test_hop_by_hop_headers_stop_here():
    r = req("GET / HTTP/1.1", "Host: a", "Connection: close, X-Secret", "X-Secret: 1",
            "Keep-Alive: 5", "Proxy-Connection: keep-alive", "TE: trailers", "X-Other: 2")
    assert not r.keep_alive
    for gone in (b"Connection", b"X-Secret", b"Keep-Alive", b"TE:"):
        assert gone not in r.head
    assert b"\r\nX-Other: 2\r\n" in r.head


def test_keep_alive_rules():
    assert req("GET / HTTP/1.1", "Host: a").keep_alive
    assert not req("GET / HTTP/1.1", "Host: a", "Connection: Close").keep_alive
    r10 = req("GET / HTTP/1.0", "Host: a")
    assert not r10.keep_alive and b"\r\nConnection: keep-alive\r\n" in r10.head
    assert req("GET / HTTP/1.0", "Host: a", "Connection: Keep-Alive").keep_alive


def test_websocket_upgrade():
    r = req("GET /ws HTTP/1.1", "Host: a", "Connection: keep-alive, Upgrade",
            "Upgrade: websocket", "Sec-WebSocket-Key: x")
    assert r.upgrade
    assert b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" in r.head
    assert not req("GET / HTTP/1.1", "Host: a", "Upgrade: websocket").upgrade


def test_absolute_form_routes_by_its_authority():
    r = req("GET http://B.test:81/x?y HTTP/1.1", "Host: a")
    assert r.host == "b.test"
    assert r.head.startswith(b"GET /x?y HTTP/1.1\r\nHost: B.test:81\r\n")
    assert req("GET http://b.test?q HTTP/1.1", "Host: a").head.startswith(b"GET /?q HTTP")
    assert req("OPTIONS * HTTP/1.1", "Host: a").host == "a"


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_fuzz_only_http_errors(data):
    try:
        r = parse_request(data, IP)
    except HttpError as exc:
        assert 400 <= exc.status < 600
    else:
        assert r.head.endswith(b"\r\n\r\n")


@given(st.lists(st.sampled_from([
    "GET / HTTP/1.1", "Host: a", "Content-Length: 3", "Transfer-Encoding: chunked",
    "Connection: close", "X: y", " x", "Host:a:1", "Upgrade: websocket", "Connection: upgrade",
    "Content-Length: 3", ":", "X-Forwarded-For: 1.1.1.1", "HTTP/1.1 200 OK"]), max_size=8))
def test_fuzz_header_mixes(lines):
    try:
        r = req(*lines)
    except HttpError:
        return
    # Whatever passed has exactly one framing for the backend.
    assert not (b"Content-Length" in r.head and b"Transfer-Encoding" in r.head)


# -- responses ------------------------------------------------------------------------------

GET = req("GET / HTTP/1.1", "Host: a")
HEAD = req("HEAD / HTTP/1.1", "Host: a")
CLOSE = req("GET / HTTP/1.1", "Host: a", "Connection: close")
OLD = req("GET / HTTP/1.0", "Host: a", "Connection: keep-alive")
WS = req("GET / HTTP/1.1", "Host: a", "Connection: upgrade", "Upgrade: websocket")


def resp(request, *lines):
    return parse_response("\r\n".join(lines).encode(), request)


def test_plain_response_is_forwarded_unchanged():
    r = resp(GET, "HTTP/1.1 200 OK", "Content-Length: 5", "Content-Type: text/plain")
    assert (r.status, r.body, r.length, r.reusable, r.close_client, r.head) == (
        200, BODY_LENGTH, 5, True, False, None)


@pytest.mark.parametrize("request_,lines,body", [
    (GET, ("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), BODY_CHUNKED),
    (GET, ("HTTP/1.1 200 OK",), BODY_CLOSE),
    (GET, ("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), BODY_CLOSE),
    (GET, ("HTTP/1.1 204 No Content", "Content-Length: 9"), BODY_NONE),
    (GET, ("HTTP/1.1 304 Not Modified", "Content-Length: 9"), BODY_NONE),
    (HEAD, ("HTTP/1.1 200 OK", "Content-Length: 9"), BODY_NONE),
    (GET, ("HTTP/1.1 200 OK", "Content-Length: 0"), BODY_NONE),
    (WS, ("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: upgrade"),
     BODY_UPGRADE),
])
def test_response_framing(request_, lines, body):
    assert resp(request_, *lines).body == body


def test_close_delimited_response_closes_the_client():
    r = resp(GET, "HTTP/1.1 200 OK", "X: 1")
    assert r.close_client and not r.reusable
    assert r.head == b"HTTP/1.1 200 OK\r\nX: 1\r\nConnection: close\r\n\r\n"


def test_backend_connection_close_is_not_passed_to_the_client():
    r = resp(GET, "HTTP/1.1 200 OK", "Connection: close, X-Hop", "X-Hop: 1", "Keep-Alive: 5",
             "Content-Length: 2")
    assert not r.reusable and not r.close_client
    assert r.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


def test_http10_backend_answers_in_http11():
    r = resp(GET, "HTTP/1.0 200 OK", "Content-Length: 2")
    assert not r.reusable and r.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert resp(GET, "HTTP/1.0 200 OK", "Connection: keep-alive", "Content-Length: 2").reusable


def test_client_side_connection_header():
    assert resp(CLOSE, "HTTP/1.1 200 OK", "Content-Length: 2").head.endswith(
        b"\r\nConnection: close\r\n\r\n")
    assert resp(OLD, "HTTP/1.1 200 OK", "Content-Length: 2").head.endswith(
        b"\r\nConnection: keep-alive\r\n\r\n")


def test_transfer_encoding_wins_over_content_length():
    r = resp(GET, "HTTP/1.1 200 OK", "Content-Length: 10", "Transfer-Encoding: chunked")
    assert r.body == BODY_CHUNKED and b"Content-Length" not in (r.head or b"")


def test_interim_responses():
    r = resp(GET, "HTTP/1.1 100 Continue")
    assert r.interim and r.body == BODY_NONE


@pytest.mark.parametrize("lines", [
    ("HTTP/1.1 101 Switching Protocols",),  # not asked for
    ("HTTP/1.1 200 OK", "Content-Length: x"),
    ("HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"),
    ("HTTP/2 200",),
    ("HTTP/1.1 20 OK",),
    ("HTTP/1.1 200 OK", "Bad Header: 1"),
])
def test_bad_responses_are_502(lines):
    with pytest.raises(HttpError) as info:
        resp(GET, *lines)
    assert info.value.status == 502


def test_error_response():
    out = http1.error_response(503, "no service for host x", close=False)
    assert out == (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8"
                   b"\r\nContent-Length: 22\r\n\r\nno service for host x\n")
    assert b"\r\nConnection: close\r\n" in http1.error_response(400, "x", close=True)
