"""The agent's session with the manager: a WebSocket over mutual TLS that reconnects until the
agent stops, and the renewal of the node's certificate beside it.

The node is who its certificate says (<state>/tls/node.pem, written by `shoal join`). After
each connect the agent registers and gets a full NodeView snapshot, and resends the latest
report of every task it runs (reports sent while disconnected were lost; the manager ignores
any that would move a task backwards).

Renewal: at a random 50-80 % of the certificate's life (or at once when the manager says
{"type": "renew"} after a role change) the agent asks for a new certificate with a new key,
saves it, and loads it into the live TLS context: the open session goes on, the next
connection presents the new certificate. A certificate that expired while the node was
offline cannot renew: the log says how to rejoin, and the agent picks up the new node.pem
that `shoal join` writes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from shoal import ca

if TYPE_CHECKING:
    from shoal.agent.worker import Agent

log = logging.getLogger("shoal.agent.session")

RETRY_MIN, RETRY_MAX = 0.1, 2.0
EXPIRED_POLL = 1.0  # seconds between looks at node.pem while the certificate is expired


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("certificate renewal stopped", exc_info=task.exception())


class Session:
    def __init__(self, manager: str, agent: Agent, tls_dir: Path) -> None:
        self.manager = manager
        self.url = f"https://{manager}/shoal/v1/session"
        self.agent = agent
        self.tls_dir = tls_dir
        self.creds = ca.NodeCredentials.load(tls_dir)  # fails clearly if the node never joined
        self.ctx: ssl.SSLContext = ca.client_context(self.creds.ca_cert, self.creds.cert,
                                                     self.creds.key)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._renew_now = asyncio.Event()

    @property
    def node_id(self) -> str:
        return self.creds.identity.node_id

    def send_status(self, reports: list[dict[str, Any]]) -> None:
        if self.ws is not None:
            self._outbox.put_nowait({"type": "status", "tasks": reports})

    def send_encryption(self, report: dict[str, Any]) -> None:
        if self.ws is not None:
            self._outbox.put_nowait({"type": "encryption", "encryption": report})

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_loop())
        renewer.add_done_callback(_log_crash)
        try:
            await self._connect_loop()
        finally:
            renewer.cancel()

    async def _connect_loop(self) -> None:
        delay = RETRY_MIN
        async with aiohttp.ClientSession() as http:
            while True:
                await self._usable_certificate()
                try:
                    async with http.ws_connect(self.url, heartbeat=2.0, max_msg_size=64 << 20,
                                               ssl=self.ctx,
                                               server_hostname=ca.MANAGER_SERVER_NAME) as ws:
                        delay = RETRY_MIN
                        await self._serve(ws)
                except aiohttp.WSServerHandshakeError as exc:
                    log.warning("the manager refused the session: %s %s", exc.status,
                                exc.message)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.debug("manager unreachable: %s", exc)
                finally:
                    self.ws = None
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _usable_certificate(self) -> None:
        """Return once this node's certificate is good. An expired one says how to rejoin,
        then waits for `shoal join` to write a new node.pem."""
        logged = False
        while True:
            try:
                self.creds.check()
                return
            except ca.CertificateRefused as exc:
                if not logged:
                    log.error("%s", exc)
                    logged = True
            await asyncio.sleep(EXPIRED_POLL)
            try:
                fresh = ca.NodeCredentials.load(self.tls_dir)
            except ca.CAError:
                continue
            if fresh.cert != self.creds.cert:
                self._use(fresh)
                log.info("picked up new credentials: %s", fresh.identity)

    def _use(self, creds: ca.NodeCredentials) -> None:
        ca.load_identity(self.ctx, creds.cert, creds.key)
        self.creds = creds

    async def _renew_loop(self) -> None:
        attempt = 0
        while True:
            delay = ca.renew_delay(self.creds.cert) if attempt == 0 else \
                ca.retry_delay(self.creds.cert, attempt)
            try:
                await asyncio.wait_for(self._renew_now.wait(), delay)
            except TimeoutError:
                pass
            self._renew_now.clear()
            try:
                new = await ca.request_renewal(self.manager, self.creds)
                new.save(self.tls_dir)
                self._use(new)
            except (ca.CAError, OSError) as exc:
                attempt += 1
                log.warning("certificate renewal failed (attempt %d): %s", attempt, exc)
                continue
            attempt = 0
            ident = new.identity
            log.info("certificate renewed: %s, valid until %s", ident,
                     ident.not_after.isoformat(timespec="seconds"))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_json(self.agent.register_message())
        reply = await ws.receive_json(timeout=10)
        if reply.get("node_id") != self.node_id:
            raise aiohttp.ClientError(f"the manager registered this node as "
                                      f"{reply.get('node_id')}, not {self.node_id}")
        self.agent.registered(reply["node_id"])
        log.info("connected to the manager as node %s", reply["node_id"])
        self._outbox = asyncio.Queue()
        self.ws = ws
        if self.agent.reports:
            self._outbox.put_nowait({"type": "status",
                                     "tasks": list(self.agent.reports.values())})
        sender = asyncio.create_task(self._send(ws))
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = msg.json()
                kind = data.get("type")
                if kind == "snapshot":
                    self.agent.set_view(data["view"])
                elif kind == "delta":
                    self.agent.apply_delta(data["delta"])
                elif kind == "renew":
                    self._renew_now.set()
                elif kind == "request":
                    body = self.agent.answer(data.get("body") or {})
                    self._outbox.put_nowait({"type": "reply", "id": data.get("id"), "body": body})
        finally:
            sender.cancel()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await self._outbox.get()
            # Batch whatever else is queued into the same status message.
            if msg["type"] == "status":
                while not self._outbox.empty() and len(msg["tasks"]) < 1000:
                    nxt = self._outbox.get_nowait()
                    if nxt["type"] != "status":
                        await ws.send_json(msg)
                        msg = nxt
                        break
                    msg["tasks"].extend(nxt["tasks"])
            await ws.send_json(msg)
