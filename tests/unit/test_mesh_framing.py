"""Body framing: where a Content-Length or chunked body ends, however the bytes are split."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.errors import HttpError
from shoal.mesh.framing import MAX_CHUNK_LINE, ChunkedBody, LengthBody


def feed_split(body, data: bytes, cuts: list[int]) -> int:
    """Feed `data` in pieces cut at `cuts`; return the absolute end index."""
    points = sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    start = 0
    for point in points:
        piece = data[start:point]
        end = body.feed(piece, 0)
        if body.done:
            return start + end
        assert end == len(piece)
        start = point
    return -1


def chunked(chunks: list[bytes], trailers: list[bytes] = (), ext: bytes = b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


def test_length_body():
    b = LengthBody(5)
    assert b.feed(b"abc", 0) == 3 and not b.done
    assert b.feed(b"xdeNEXT", 1) == 3 and b.done
    assert LengthBody(0).done


def test_chunked_whole_and_next_request_after_it():
    data = chunked([b"hello", b" world"], [b"X-Sum: 1"]) + b"GET / HTTP/1.1\r\n"
    b = ChunkedBody()
    end = b.feed(data, 0)
    assert b.done and data[end:] == b"GET / HTTP/1.1\r\n"


@given(st.lists(st.binary(max_size=40), max_size=6),
       st.lists(st.sampled_from([b"A: 1", b"Bb: x y"]), max_size=2),
       st.sampled_from([b"", b";a=b", b" ;x", b";q=\"v\""]),
       st.lists(st.integers(0, 400), max_size=20))
@settings(max_examples=300)
def test_chunked_any_split_ends_at_the_same_place(chunks, trailers, ext, cuts):
    data = chunked(chunks, trailers, ext)
    assert feed_split(ChunkedBody(), data + b"tail", cuts) == len(data)


@given(st.binary(min_size=1, max_size=200), st.integers(1, 50), st.integers(1, 9))
def test_length_any_split(data, n, step):
    n = min(n, len(data))
    assert feed_split(LengthBody(n), data, list(range(0, len(data), step))) == n


@pytest.mark.parametrize("data", [
    b"5\r\nhelloX\r\n",  # no CRLF after the data
    b"5\r\nhello\n0\r\n\r\n",  # LF only
    b"g\r\n",  # not hex
    b"-5\r\n",
    b" 5\r\n",
    b"5 \r\n",  # whitespace without an extension
    b"\r\n",  # empty size
    b"11111111111111111\r\n",  # 17 hex digits
    b"5\n",  # bare LF
    b"5\r\r\n",
    b"0\r\nbad trailer\r\n\r\n",
    b"0\r\nX : 1\r\n\r\n",
])
def test_chunked_errors(data):
    b = ChunkedBody(400)
    with pytest.raises(HttpError) as info:
        for i in range(len(data)):  # byte by byte: errors found however data arrives
            b.feed(data[i : i + 1], 0)
            if b.done:
                break
    assert info.value.status == 400


def test_chunk_line_is_bounded():
    b = ChunkedBody(502)
    with pytest.raises(HttpError) as info:
        b.feed(b"1;" + b"x" * MAX_CHUNK_LINE, 0)
    assert info.value.status == 502


def test_trailers_are_bounded():
    b = ChunkedBody()
    b.feed(b"0\r\n", 0)
    with pytest.raises(HttpError):
        for _ in range(2000):
            b.feed(b"X-Long: " + b"y" * 100 + b"\r\n", 0)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_fuzz_only_http_errors(data):
    b = ChunkedBody()
    try:
        end = b.feed(data, 0)
    except HttpError:
        return
    assert 0 <= end <= len(data)
    assert b.done or end == len(data)
