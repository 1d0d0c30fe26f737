"""The HTTP routing mesh as a real process on loopback, with real backends and real curl.

Backends are aiohttp servers (and one TLS server) in this test's event loop, on 127.0.0.1
ephemeral ports; the mesh is `python -m shoal.mesh` started through MeshProcess, the API the
agent uses. Nothing leaves the machine, nothing needs root, and every process and server a
test starts is stopped by its fixture, also when the test fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shoal.mesh import MeshConfig, MeshOptions, MeshProcess

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="needs curl")

BIG = 50 * 1024 * 1024


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"shoal").digest() * 2048  # 64 KiB, not compressible by accident
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Backend:
    name: str
    port: int = 0
    connections: set[int] = field(default_factory=set)  # client ports seen
    requests: int = 0
    runner: web.AppRunner | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def make_app(b: Backend) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        b.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            b.connections.add(peer[1])
        return web.json_response({"backend": b.name, "path": request.path_qs,
                                  "headers": dict(request.headers)})

    async def upload(request: web.Request) -> web.Response:
        b.requests += 1
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"backend": b.name, "size": size, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding", "")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(int(request.query.get("n", "10"))):
            await resp.write(f"piece {i}\n".encode() * (i + 1))
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = BIG
        await resp.prepare(request)
        data = pattern(BIG)
        for i in range(0, BIG, 1 << 20):
            await resp.write(data[i : i + (1 << 20)])
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(f"{b.name}: {msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=BIG * 2)
    app.router.add_get("/ws", ws)
    app.router.add_post("/upload", upload)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_backend(name: str) -> Backend:
    b = Backend(name)
    b.runner = web.AppRunner(make_app(b), access_log=None)
    await b.runner.setup()
    site = web.TCPSite(b.runner, "127.0.0.1", 0)
    await site.start()
    b.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return b


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    made = {name: await start_backend(name) for name in ("a", "b", "c")}
    try:
        yield made
    finally:
        for b in made.values():
            assert b.runner is not None
            await b.runner.cleanup()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: connecting is refused


@pytest.fixture
async def mesh(backends: dict[str, Backend]) -> AsyncIterator[MeshProcess]:
    m = MeshProcess(MeshOptions(http="127.0.0.1:0", https="127.0.0.1:0",
                                config=MeshConfig(header_timeout=1.0)))
    await m.start()
    try:
        await m.set_routes({"http": {"a.test": [backends["a"].addr],
                                     "b.test": [backends["b"].addr]}})
        yield m
    finally:
        await m.stop()


def url(m: MeshProcess, path: str = "/") -> str:
    assert m.http_address is not None
    return f"http://127.0.0.1:{m.http_address[1]}{path}"


async def curl(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", str(timeout), *args, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def curl_json(*args: str) -> dict:
    code, out, err = await curl(*args)
    assert code == 0, err
    return json.loads(out)


async def raw(m: MeshProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the mesh closes (or timeout)."""
    assert m.http_address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", m.http_address[1])
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


# -- routing ----------------------------------------------------------------------------------

async def test_routes_by_host(mesh, backends):
    for host, name in (("a.test", "a"), ("B.TEST.", "b"), ("a.test:8080", "a")):
        body = await curl_json("-H", f"Host: {host}", url(mesh, "/x?y=1"))
        assert (body["backend"], body["path"]) == (name, "/x?y=1")


async def test_unknown_host_503_and_no_host_400(mesh):
    code, out, _ = await curl("-w", "%{http_code}", "-H", "Host: nope.test", url(mesh))
    assert out.endswith("503") and "no service for host nope.test" in out
    answer = await raw(mesh, b"GET / HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"no Host header" in answer


async def test_forwarded_headers(mesh):
    body = await curl_json("-H", "Host: a.test", "-H", "X-Forwarded-For: 203.0.113.7",
                           "-H", "X-Forwarded-Proto: https", url(mesh))
    h = body["headers"]
    assert h["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == "a.test"


async def test_keep_alive_on_both_sides(mesh, backends):
    urls = [arg for i in range(5) for arg in ("-o", "/dev/null", url(mesh, f"/{i}"))]
    code, out, err = await curl("-H", "Host: a.test", "-w", "%{num_connects}\\n", *urls)
    assert code == 0, err
    assert out.split() == ["1", "0", "0", "0", "0"]  # curl: one connection to the mesh
    assert backends["a"].requests == 5
    assert len(backends["a"].connections) == 1  # mesh: one pooled connection to the backend


async def test_pipelined_requests_answered_in_order(mesh):
    one = b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n"
    data = b"".join(one % i for i in range(3)) + b"GET /last HTTP/1.1\r\nHost: a.test\r\n" \
        b"Connection: close\r\n\r\n"
    answer = await raw(mesh, data)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    assert [answer.find(b'"/%s"' % p) for p in (b"0", b"1", b"2", b"last")] == sorted(
        answer.find(b'"/%s"' % p) for p in (b"0", b"1", b"2", b"last"))


# -- bodies -----------------------------------------------------------------------------------

async def test_chunked_upload_and_download(mesh, tmp_path):
    data = pattern(3 * 1024 * 1024 + 17)
    (tmp_path / "up").write_bytes(data)
    body = await curl_json("-H", "Host: a.test", "-H", "Transfer-Encoding: chunked",
                           "--data-binary", f"@{tmp_path / 'up'}", url(mesh, "/upload"))
    assert body["chunked"] == "chunked"
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())

    code, out, err = await curl("-D", str(tmp_path / "h"), "-H", "Host: a.test",
                                url(mesh, "/chunked?n=50"))
    assert code == 0, err
    assert "transfer-encoding: chunked" in (tmp_path / "h").read_text().lower()
    assert out == "".join(f"piece {i}\n" * (i + 1) for i in range(50))


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_50mb_bodies_stream_both_ways(mesh, tmp_path):
    data = pattern(BIG)
    (tmp_path / "up").write_bytes(data)
    assert mesh.pid is not None
    before = vm_hwm_kib(mesh.pid)
    # curl sends "Expect: 100-continue" for a body this size: the mesh passes it through.
    code, out, err = await curl("-v", "-H", "Host: a.test", "--data-binary",
                                f"@{tmp_path / 'up'}", url(mesh, "/upload"))
    assert code == 0, err
    assert "Expect: 100-continue" in err and "HTTP/1.1 100 Continue" in err
    body = json.loads(out)
    assert (body["size"], body["sha256"]) == (BIG, hashlib.sha256(data).hexdigest())

    code, _, err = await curl("-H", "Host: a.test", "-o", str(tmp_path / "down"),
                              url(mesh, "/big"))
    assert code == 0, err
    assert hashlib.sha256((tmp_path / "down").read_bytes()).digest() == hashlib.sha256(
        data).digest()
    grown = vm_hwm_kib(mesh.pid) - before
    assert grown < 20 * 1024, f"the mesh grew by {grown} KiB: bodies are being buffered"


# -- WebSocket --------------------------------------------------------------------------------

async def test_websocket_echo_through_the_mesh(mesh):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url(mesh, "/ws"), headers={"Host": "b.test"}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "b: hello"
            blob = os.urandom(1 << 20)
            await ws.send_bytes(blob)
            assert (await ws.receive(timeout=10)).data == blob
            # A route change does not cut an open tunnel.
            await mesh.set_routes({"http": {"a.test": ["127.0.0.1:1"]}})
            await ws.send_str("still here")
            assert (await ws.receive(timeout=5)).data == "b: still here"


# -- TLS passthrough --------------------------------------------------------------------------

@pytest.fixture
async def tls_backend(tmp_path) -> AsyncIterator[tuple[int, bytes]]:
    """A TLS server for secure.test with a self-signed certificate; answers one HTTP line."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=secure.test", "-addext",
                    "subjectAltName=DNS:secure.test"], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = b"tls backend\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    try:
        yield server.sockets[0].getsockname()[1], der
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_passthrough_by_sni(mesh, tls_backend, tmp_path):
    port, der = tls_backend
    await mesh.set_routes({"https": {"secure.test": [f"127.0.0.1:{port}"]}})
    assert mesh.https_address is not None
    mport = mesh.https_address[1]
    target = f"https://secure.test:{mport}/"
    code, out, err = await curl("-vk", "--resolve", f"secure.test:{mport}:127.0.0.1", target)
    assert code == 0, err
    assert out == "tls backend\n"
    assert "subject: CN=secure.test" in err  # the backend's certificate, end to end

    # The same with Python's ssl, comparing the exact certificate bytes.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", mport, ssl=ctx,
                                                   server_hostname="secure.test")
    assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == der
    writer.close()

    # Unknown name: an unrecognized_name alert; no name (an IP address sends no SNI): refused.
    code, _, err = await curl("-k", "--resolve", f"other.test:{mport}:127.0.0.1",
                              f"https://other.test:{mport}/")
    assert code == 35 and "unrecognized name" in err
    code, _, _ = await curl("-k", f"https://127.0.0.1:{mport}/")
    assert code == 35
    # Not TLS at all: closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", mport)
    writer.write(b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5))[:1] == b"\x15"  # an alert, then EOF
    writer.close()


# -- routes while running ---------------------------------------------------------------------

async def test_route_update_takes_effect_within_a_second(mesh, backends):
    code, out, _ = await curl("-w", "%{http_code}", "-o", "/dev/null", "-H", "Host: c.test",
                              url(mesh))
    assert out == "503"
    started = time.monotonic()
    update = asyncio.create_task(mesh.set_routes({"http": {"c.test": [backends["c"].addr]}}))
    while True:
        body = (await curl("-H", "Host: c.test", url(mesh)))[1]
        if '"backend": "c"' in body.replace('":"', '": "'):
            break
        assert time.monotonic() - started < 1.0, "route not live after 1 s"
    added = time.monotonic() - started
    await update
    started = time.monotonic()
    await mesh.set_routes({"http": {}})
    code, out, _ = await curl("-w", "%{http_code}", "-o", "/dev/null", "-H", "Host: c.test",
                              url(mesh))
    assert out == "503" and time.monotonic() - started < 1.0
    assert added < 1.0


async def test_bad_routes_are_refused_and_the_old_table_stays(mesh):
    from shoal.mesh import InvalidRoutes

    with pytest.raises(InvalidRoutes):
        await mesh.set_routes({"http": {"a b": ["1.2.3.4:80"]}})
    assert (await curl_json("-H", "Host: a.test", url(mesh)))["backend"] == "a"


async def test_dead_backend_is_skipped(mesh, backends):
    await mesh.set_routes({"http": {"a.test": [f"127.0.0.1:{dead_port()}", backends["a"].addr,
                                               f"127.0.0.1:{dead_port()}"]}})
    for _ in range(6):
        assert (await curl_json("-H", "Host: a.test", url(mesh)))["backend"] == "a"
    await mesh.set_routes({"http": {"a.test": [f"127.0.0.1:{dead_port()}"]}})
    code, out, _ = await curl("-w", "%{http_code}", "-H", "Host: a.test", url(mesh))
    assert out.endswith("502")


async def test_round_robin_over_backends(mesh, backends):
    await mesh.set_routes({"http": {"rr.test": [b.addr for b in backends.values()]}})
    seen = [(await curl_json("-H", "Host: rr.test", url(mesh)))["backend"] for _ in range(6)]
    assert sorted(seen) == ["a", "a", "b", "b", "c", "c"]


# -- abuse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("attempt", [
    b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nContent-Length: 40\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5 \r\nhello\r\n0\r\n\r\n",
])
async def test_smuggling_attempts_get_400(mesh, backends, attempt):
    answer = await raw(mesh, attempt)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1") == 1
    assert backends["a"].requests == 0  # no request of the attempt reached a backend


async def test_smuggling_with_curl(mesh, backends):
    code, out, _ = await curl("-w", "%{http_code}", "-o", "/dev/null", "-H", "Host: a.test",
                              "-H", "Content-Length: 5", "-H", "Content-Length: 7",
                              "--data-binary", "hello", url(mesh))
    assert out == "400" and backends["a"].requests == 0


async def test_header_size_and_time_are_bounded(mesh):
    answer = await raw(mesh, b"GET / HTTP/1.1\r\nHost: a.test\r\nX: " + b"y" * 70000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    # slowloris: a head that never ends is cut after header_timeout (1 s here) + the sweep.
    started = time.monotonic()
    assert mesh.http_address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.http_address[1])
    writer.write(b"GET / HTTP/1.1\r\nHost: a.te")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < 3.5
    writer.close()


# -- the process ------------------------------------------------------------------------------

async def test_workers_share_the_port_and_get_every_update(backends):
    m = MeshProcess(MeshOptions(http="127.0.0.1:0", https="none", workers=2))
    await m.start()
    try:
        await m.set_routes({"http": {"w.test": [backends["a"].addr]}})
        await asyncio.sleep(0.2)  # workers apply the line right after the parent
        assert {(await curl_json("-H", "Host: w.test", url(m)))["backend"]
                for _ in range(12)} == {"a"}
        await m.set_routes({"http": {"w.test": [backends["b"].addr]}})
        await asyncio.sleep(0.2)
        assert {(await curl_json("-H", "Host: w.test", url(m)))["backend"]
                for _ in range(12)} == {"b"}
        assert m.pid is not None
        children = Path(f"/proc/{m.pid}/task/{m.pid}/children").read_text().split()
        assert len(children) == 1
    finally:
        await m.stop()
    for child in children:
        assert not Path(f"/proc/{child}").exists()


async def test_restarted_after_a_crash_with_its_routes(mesh, backends):
    old = mesh.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while mesh.pid == old or not mesh._ready.is_set():
        assert time.monotonic() < deadline, "not restarted"
        await asyncio.sleep(0.05)
    assert (await curl_json("-H", "Host: b.test", url(mesh)))["backend"] == "b"
    assert mesh.restarts == 1


def test_exits_when_its_parent_dies():
    """The agent is SIGKILLed: its mesh must not linger (stdin EOF and PR_SET_PDEATHSIG)."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'shoal.mesh', '--http', '127.0.0.1:0',"
         " '--https', 'none'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
         "print(p.pid, flush=True); p.stdout.readline(); print('ready', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists():
        status = Path(f"/proc/{child}/status").read_text() if Path(
            f"/proc/{child}").exists() else ""
        if "State:\tZ" in status:
            break  # exited; its reaper (init here) has not collected it yet
        assert time.monotonic() < deadline, "the mesh outlived its parent"
        time.sleep(0.05)


async def test_a_taken_port_fails_start_with_a_clear_error():
    from shoal.mesh import MeshError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        m = MeshProcess(MeshOptions(http=f"127.0.0.1:{s.getsockname()[1]}", https="none"))
        started = time.monotonic()
        with pytest.raises(MeshError, match="did not start"):
            await m.start()
        assert time.monotonic() - started < 10
        assert m.proc is not None and m.proc.returncode == 2


async def test_http10_backend_behind_a_kept_alive_client(mesh, tmp_path):
    """`python3 -m http.server` answers HTTP/1.0 and closes; the client keeps its connection."""
    (tmp_path / "hello.txt").write_text("from http.server\n")
    port = dead_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
        "--directory", str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        await mesh.set_routes({"http": {"old.test": [f"127.0.0.1:{port}"]}})
        urls = [a for _ in range(3) for a in ("-o", "/dev/null", url(mesh, "/hello.txt"))]
        code, out, err = await curl("-H", "Host: old.test", "-w", "%{http_code} "
                                    "%{num_connects} %{http_version}\\n", *urls)
        assert code == 0, err
        assert out.split("\n")[:3] == ["200 1 1.1", "200 0 1.1", "200 0 1.1"]
    finally:
        server.terminate()
        await server.wait()
