"""The agent's session with the manager: a WebSocket that reconnects until the agent stops.

After each connect the agent registers, gets its node id and a full NodeView snapshot, and
resends the latest report of every task it runs (reports sent while disconnected were lost;
the manager ignores any that would move a task backwards).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from shoal.agent.worker import Agent

log = logging.getLogger("shoal.agent.session")

RETRY_MIN, RETRY_MAX = 0.1, 2.0


class Session:
    def __init__(self, manager: str, agent: Agent) -> None:
        self.url = f"http://{manager}/shoal/v1/session"
        self.agent = agent
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def send_status(self, reports: list[dict[str, Any]]) -> None:
        if self.ws is not None:
            self._outbox.put_nowait({"type": "status", "tasks": reports})

    def send_encryption(self, report: dict[str, Any]) -> None:
        if self.ws is not None:
            self._outbox.put_nowait({"type": "encryption", "encryption": report})

    async def run(self) -> None:
        delay = RETRY_MIN
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.ws_connect(self.url, heartbeat=2.0,
                                               max_msg_size=64 << 20) as ws:
                        delay = RETRY_MIN
                        await self._serve(ws)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.debug("manager unreachable: %s", exc)
                finally:
                    self.ws = None
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_json(self.agent.register_message())
        reply = await ws.receive_json(timeout=10)
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
