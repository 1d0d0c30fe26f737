"""Mutual TLS on loopback: a real aiohttp server (server_context on 127.0.0.1:0) and real
aiohttp clients (client_context). No root, no lab: what a peer sees and what the server logs.

The reference app below is the shape the manager's cluster port takes (docs/security.md):
auth_middleware in front of everything, the CA and the join open to clients without a
certificate, the renewal and everything else behind a verified identity.
"""

import asyncio
import logging
import socket
import ssl
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from shoal import ca
from shoal.ca.join import _post
from shoal.ca.tls import TLSSite

HOST = "127.0.0.1"


# --- a reference cluster port ---


@web.middleware
async def errors(request, handler):
    try:
        return await handler(request)
    except ca.CAError as exc:
        return web.json_response({"message": str(exc)}, status=exc.status)


def make_app(auth: ca.Authority, *, ca_pem: bytes | None = None) -> web.Application:
    async def get_ca(request):
        return web.Response(body=ca_pem or auth.root.cert_pem,
                            content_type="application/x-pem-file")

    async def join(request):
        body = await request.json()
        return web.json_response(auth.admit(body["token"], body["csr"],
                                            previous=body.get("previous")).to_json())

    async def renew(request):
        ident = ca.authorize(request, ca.MANAGER, ca.WORKER)
        cert = auth.renew(ident, (await request.json())["csr"])
        return web.json_response({"cert": ca.cert_pem(cert).decode()})

    async def whoami(request):
        ident = request[ca.IDENTITY]
        tls = request.transport.get_extra_info("ssl_object").version()
        return web.json_response({"name": ident.name, "role": ident.role,
                                  "cluster": ident.cluster_id, "serial": ident.serial,
                                  "tls": tls})

    async def managers_only(request):
        ident = ca.authorize(request, ca.MANAGER)
        return web.json_response({"ok": ident.node_id})

    async def local(request):
        ca.authorize(request, ca.ADMIN)
        return web.json_response({"local": request.get(ca.LOCAL, False)})

    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application(middlewares=[ca.auth_middleware(auth.trust), errors])
    app.router.add_get(ca.CA_PATH, get_ca)
    app.router.add_post(ca.JOIN_PATH, join)
    app.router.add_post(ca.RENEW_PATH, renew)
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/managers-only", managers_only)
    app.router.add_get("/echo", echo)
    app.router.add_get("/local", local)
    return app


@asynccontextmanager
async def serving(app, ctx, site_cls=TLSSite):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = site_cls(runner, HOST, 0, ssl_context=ctx)
        await site.start()
        yield f"{HOST}:{site.port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def auth():
    return ca.Authority.create("cluster1", allow_short=True)


@pytest.fixture
def manager(auth):
    return auth.issue_node_credentials(ca.new_node_id(), "manager", addrs=[HOST])


def ctx_of(creds):
    return ca.client_context(creds.ca_cert, creds.cert, creds.key)


async def get(addr, ctx, path="/whoami", session=None):
    """(status, json) of GET https://addr/path, dialling the manager by its role's name."""
    async def go(s):
        async with s.get(f"https://{addr}{path}", ssl=ctx,
                         server_hostname=ca.MANAGER_SERVER_NAME) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    if session is not None:
        return await go(session)
    async with aiohttp.ClientSession() as s:
        return await go(s)


@pytest.fixture
async def server(auth, manager):
    async with serving(make_app(auth), ca.server_context(auth.root.cert, manager.cert,
                                                         manager.key)) as addr:
        yield addr


async def refused_in_log(caplog, reason, wait=3.0):
    """The server's log lines refusing a handshake for `reason`; the server may log a moment
    after the client gave up, so wait for it a little."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while True:
        found = [r for r in caplog.records
                 if r.name == "shoal.ca" and "refused a TLS connection" in r.getMessage()
                 and reason in r.getMessage()]
        if found or loop.time() > end:
            return found
        await asyncio.sleep(0.02)


# --- mutual TLS works, and the server knows who is calling ---


@pytest.mark.parametrize("site_cls", [TLSSite, web.TCPSite])
@pytest.mark.parametrize("role", ["worker", "manager"])
async def test_mutual_tls_and_the_server_sees_node_id_and_role(auth, manager, site_cls, role):
    node = auth.issue_node_credentials("node7", role)
    ctx = ca.server_context(auth.root.cert, manager.cert, manager.key)
    async with serving(make_app(auth), ctx, site_cls) as addr:
        status, body = await get(addr, ctx_of(node))
    assert status == 200
    assert body == {"name": "node7", "role": f"swarm-{role}", "cluster": "cluster1",
                    "serial": node.cert.serial_number, "tls": "TLSv1.3"}


async def test_manager_addressed_by_ip_san(server, auth):
    # remote clients that dial the address (the docker CLI) match the IP SAN instead
    node = auth.issue_node_credentials("n1", "worker")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://{server}/whoami", ssl=ctx_of(node)) as resp:
            assert resp.status == 200


# --- what is refused ---


async def test_plaintext_client_refused(server, caplog):
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s:
            await s.get(f"http://{server}/whoami")
    host, port = server.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    assert not answer.startswith(b"HTTP")  # not a byte of HTTP comes back
    assert await refused_in_log(caplog, "plaintext HTTP")


async def test_client_without_certificate_refused(server, auth, caplog):
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    with pytest.raises(aiohttp.ClientError):
        await get(server, ca.client_context(auth.root.cert))
    assert await refused_in_log(caplog, "no client certificate")


async def test_certificate_of_another_ca_refused(server, auth, caplog):
    other = ca.Authority.create("cluster1")  # same cluster id, another key: still refused
    node = other.issue_node_credentials("n1", "manager")
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    with pytest.raises(aiohttp.ClientError):
        await get(server, ca.client_context(auth.root.cert, node.cert, node.key))
    assert await refused_in_log(caplog, "from another CA")
    # and a client of the other cluster refuses this manager in turn
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(server, ca.client_context(node.ca_cert, node.cert, node.key))
    assert await refused_in_log(caplog, "hung up during the handshake")


async def test_revoked_certificate_refused_at_once(server, auth, caplog):
    node = auth.issue_node_credentials("n1", "worker")
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    ctx = ctx_of(node)  # one context: aiohttp keeps the connection for the next request
    async with aiohttp.ClientSession() as s:
        assert (await get(server, ctx, session=s))[0] == 200
        auth.revoke_node("n1")
        # the same keep-alive connection: refused from the next request on
        status, body = await get(server, ctx, session=s)
    assert status == 401
    assert "node n1 (swarm-worker)" in body["message"]
    assert "revoked: node removed" in body["message"]
    status, _ = await get(server, ctx_of(node))  # and on a new connection
    assert status == 401
    assert any("revoked" in r.getMessage() for r in caplog.records if r.name == "shoal.ca")


async def test_expired_certificate_refused(server, auth, caplog):
    old = ca.Authority(auth.root, auth.tokens, node_lifetime=timedelta(hours=1))
    node = old.issue_node_credentials("n1", "worker", now=datetime.now(UTC) - timedelta(hours=2))
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    with pytest.raises(aiohttp.ClientError):
        await get(server, ctx_of(node))
    assert await refused_in_log(caplog, "expired")
    # the client only sees "server disconnected"; its own check tells it why and what to do
    with pytest.raises(ca.CertificateExpired, match="shoal join --token"):
        node.check()


async def test_certificate_expiring_on_an_open_connection(server, auth):
    auth.set_lifetime(timedelta(seconds=3))
    node = auth.issue_node_credentials("n1", "worker")
    ctx = ctx_of(node)
    async with aiohttp.ClientSession() as s:
        assert (await get(server, ctx, session=s))[0] == 200
        wait = (node.cert.not_valid_after_utc - datetime.now(UTC)).total_seconds() + 1.2
        await asyncio.sleep(max(wait, 0))
        # the connection opened while the certificate was valid is still up: refused per
        # request by the identity check (the handshake checked the dates only once)
        status, body = await get(server, ctx, session=s)
        assert status == 401 and "expired" in body["message"]
    with pytest.raises(aiohttp.ClientError):
        await get(server, ctx_of(node))


async def test_tls12_refused(server, auth, caplog):
    node = auth.issue_node_credentials("n1", "worker")
    ctx = ctx_of(node)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    with pytest.raises(aiohttp.ClientError):
        await get(server, ctx)
    assert await refused_in_log(caplog, "below 1.3")


async def test_worker_cannot_pose_as_manager(auth):
    worker = auth.issue_node_credentials("w1", "worker", addrs=[HOST])
    ctx = ca.server_context(auth.root.cert, worker.cert, worker.key)
    client = auth.issue_node_credentials("n1", "worker")
    async with serving(make_app(auth), ctx) as addr:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="swarm-manager"):
            await get(addr, ctx_of(client))


async def test_worker_forbidden_on_a_manager_call(server, auth):
    worker, mgr = (auth.issue_node_credentials("w1", "worker"),
                   auth.issue_node_credentials("m2", "manager"))
    async with aiohttp.ClientSession() as s:
        for creds, want in ((worker, 403), (mgr, 200)):
            async with s.post(f"https://{server}/managers-only", ssl=ctx_of(creds),
                              server_hostname=ca.MANAGER_SERVER_NAME) as resp:
                assert resp.status == want
                if want == 403:
                    assert "may not POST /managers-only" in (await resp.json())["message"]


async def test_handshake_timeout_is_logged(auth, manager, caplog):
    caplog.set_level(logging.WARNING, logger="shoal.ca")
    runner = web.AppRunner(make_app(auth))
    await runner.setup()
    site = TLSSite(runner, HOST, 0, handshake_timeout=0.3,
                   ssl_context=ca.server_context(auth.root.cert, manager.cert, manager.key))
    await site.start()
    try:
        reader, writer = await asyncio.open_connection(HOST, site.port)  # says nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hangs up
        writer.close()
        assert await refused_in_log(caplog, "no TLS handshake in time")
        await asyncio.open_connection(HOST, site.port)  # a handshake pending at shutdown
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


async def test_unix_socket_is_local_and_plaintext_tcp_refused(auth, tmp_path):
    runner = web.AppRunner(make_app(auth))
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    plain = web.TCPSite(runner, HOST, 0)  # a misconfiguration: never trusted
    await plain.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(sock)) as s:
            async with s.get("http://shoal/local") as resp:
                assert resp.status == 200 and (await resp.json()) == {"local": True}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{HOST}:{plain.port}/local") as resp:
                assert resp.status == 401
                assert "plaintext" in (await resp.json())["message"]
            async with s.get(f"http://{HOST}:{plain.port}{ca.CA_PATH}") as resp:
                assert resp.status == 401
    finally:
        await runner.cleanup()


async def test_users_authenticate_and_roles_are_enforced(server, auth):
    key = ca.new_key()
    viewer = auth.issue_user(ca.make_csr(key), "alice", ca.VIEWER)
    ctx = ca.client_context(auth.root.cert, viewer, key)
    status, body = await get(server, ctx)
    assert status == 200 and (body["name"], body["role"]) == ("alice", "viewer")
    status, body = await get(server, ctx, "/local")
    assert status == 403 and "user alice (viewer) may not GET /local" in body["message"]


# --- the join port: client certificates optional, only the CA and the join open ---


@pytest.fixture
async def join_server(auth, manager):
    ctx = ca.server_context(auth.root.cert, manager.cert, manager.key, require_client_cert=False)
    async with serving(make_app(auth), ctx) as addr:
        yield addr


async def test_open_port_serves_only_the_ca_and_the_join(join_server, auth):
    anon = ca.client_context(auth.root.cert)
    assert (await get(join_server, anon, ca.CA_PATH))[0] == 200
    status, body = await get(join_server, anon, "/whoami")
    assert status == 401 and "certificate from this cluster's CA" in body["message"]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"https://{join_server}/managers-only", ssl=anon,
                          server_hostname=ca.MANAGER_SERVER_NAME) as resp:
            assert resp.status == 401


async def test_open_port_still_refuses_bad_certificates_in_the_handshake(join_server, auth):
    other = ca.Authority.create("cluster1").issue_node_credentials("n1", "worker")
    with pytest.raises(aiohttp.ClientError):
        await get(join_server, ca.client_context(auth.root.cert, other.cert, other.key),
                  ca.CA_PATH)
    node = auth.issue_node_credentials("n1", "worker")
    assert (await get(join_server, ctx_of(node)))[1]["name"] == "n1"


# --- pinning and joining ---


async def test_fetch_and_pin_accepts_the_right_ca(join_server, auth):
    got = await ca.fetch_and_pin(join_server, auth.tokens.token("worker"))
    assert got == auth.root.cert


async def test_fetch_and_pin_refuses_a_wrong_digest(join_server):
    other = ca.Authority.create("cluster1")
    with pytest.raises(ca.PinningFailed, match="the join token pins"):
        await ca.fetch_and_pin(join_server, other.tokens.token("worker"))


async def test_fetch_and_pin_refuses_a_server_not_of_that_ca(auth):
    # someone in the middle who serves the (public) CA certificate of the real cluster but
    # holds no certificate of it
    mitm = ca.Authority.create("cluster1")
    mc = mitm.issue_node_credentials("m1", "manager")
    ctx = ca.server_context(mitm.root.cert, mc.cert, mc.key, require_client_cert=False)
    async with serving(make_app(mitm, ca_pem=auth.root.cert_pem), ctx) as addr:
        with pytest.raises(ca.PinningFailed, match="is not a manager of the CA it served"):
            await ca.fetch_and_pin(addr, auth.tokens.token("worker"))


async def test_fetch_and_pin_malformed_token_and_no_manager(join_server):
    with pytest.raises(ca.MalformedToken):
        await ca.fetch_and_pin(join_server, "SWMTKN-1-nope")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    token = ca.Authority.create("c1").tokens.token("worker")
    with pytest.raises(ca.ManagerUnreachable):
        await ca.fetch_and_pin(f"{HOST}:{port}", token, timeout=3)


@pytest.mark.parametrize("role", ["worker", "manager"])
async def test_join_then_mutual_tls(join_server, auth, role):
    creds = await ca.request_join(join_server, auth.tokens.token(role))
    ident = creds.identity
    assert ident.role == f"swarm-{role}" and ident.cluster_id == "cluster1"
    assert creds.ca_cert == auth.root.cert
    status, body = await get(join_server, ctx_of(creds))
    assert status == 200 and body["name"] == ident.node_id


async def test_join_with_a_wrong_or_rotated_token(join_server, auth):
    old = auth.tokens.token("worker")
    auth.tokens.rotate("worker")
    with pytest.raises(ca.JoinRefused, match="rotated") as err:
        await ca.request_join(join_server, old)
    assert err.value.status == 401
    assert (await ca.request_join(join_server, auth.tokens.token("worker"))).identity.is_worker


async def test_rejoin_after_expiry_keeps_the_node_id(join_server, auth):
    auth.set_lifetime(timedelta(hours=1))
    key = ca.new_key()
    gone = auth.issue_node_credentials("n1abc", "worker", key=key,
                                       now=datetime.now(UTC) - timedelta(hours=3))
    with pytest.raises(aiohttp.ClientError):  # offline past its expiry: refused
        await get(join_server, ctx_of(gone))
    back = await ca.request_join(join_server, auth.tokens.token("worker"), key=key,
                                 previous=gone.cert)
    assert back.identity.node_id == "n1abc"
    assert (await get(join_server, ctx_of(back)))[1]["name"] == "n1abc"


async def test_renewal_without_dropping_a_session(join_server, auth):
    creds = auth.issue_node_credentials("n1", "worker")
    ctx = ctx_of(creds)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"wss://{join_server}/echo", ssl=ctx,
                                server_hostname=ca.MANAGER_SERVER_NAME) as ws:
            await ws.send_str("before")
            assert (await ws.receive_str(timeout=5)) == "before"
            new = await ca.request_renewal(join_server, creds)
            assert new.identity.node_id == "n1"
            assert new.cert.serial_number != creds.cert.serial_number
            ca.load_identity(ctx, new.cert, new.key)  # the live context: new connections only
            await ws.send_str("after")
            assert (await ws.receive_str(timeout=5)) == "after"
        async with aiohttp.ClientSession() as fresh:
            _, body = await get(join_server, ctx, session=fresh)
        assert body["serial"] == new.cert.serial_number


async def test_renewal_needs_a_certificate(join_server, auth):
    with pytest.raises(ca.JoinRefused) as err:
        await _post(join_server, ca.RENEW_PATH, {"csr": ca.make_csr(ca.new_key()).decode()},
                    ca.client_context(auth.root.cert), 5)
    assert err.value.status == 401


# --- uvloop: TLSSite refuses it rather than lose handshakes ---


def test_tls_site_refuses_uvloop(auth, manager):
    """On uvloop a ClientHello that arrives with the connection would reach TLSSite's
    handshake-first protocol before start_tls, and be lost (found by bench/api_tls.py:
    about one new connection in five timed out)."""
    uvloop = pytest.importorskip("uvloop")

    async def main():
        ctx = ca.server_context(auth.root.cert, manager.cert, manager.key)
        async with serving(make_app(auth), ctx):
            pass

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, \
            pytest.raises(ca.CAError, match="asyncio's own event loop"):
        runner.run(main())
