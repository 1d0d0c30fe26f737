"""The dispatcher: one session per agent, carrying that node's NodeView and its task reports.

An agent connects (a WebSocket on the cluster port), registers, and gets a full snapshot of its
NodeView; afterwards every settled change in the store sends it only the delta. The agent sends
task state reports back, which land in the store in one transaction per message. A node whose
session drops is marked down after a short grace, so a manager or network blip does not flap it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from typing import Any

from aiohttp import WSMsgType, web

from shoal.manager.allocator import network_vni
from shoal.model import view as nv
from shoal.model.objects import TERMINAL, Obj, new_id, new_node, now, state_index, task_command
from shoal.store.base import BaseStore

log = logging.getLogger("shoal.dispatcher")

DOWN_GRACE = 3.0  # seconds a node may be without a session before it is marked down
HEARTBEAT = 2.0  # WebSocket ping period; a missed pong closes the session


class Session:
    def __init__(self, node_id: str, ws: web.WebSocketResponse) -> None:
        self.node_id = node_id
        self.ws = ws
        self.sent: nv.NodeView | None = None
        self.replies: dict[str, asyncio.Future[Any]] = {}


def _attachment(addr: str) -> nv.Attachment:
    ip, prefix = addr.split("/")
    return {"ip": ip, "prefixlen": int(prefix), "mac": nv.mac_for(ip)}


def _addrs(task: Obj, networks: set[str] | None = None) -> dict[str, nv.Attachment]:
    return {a["Network"]["ID"]: _attachment(a["Addresses"][0])
            for a in task.get("NetworksAttachments", [])
            if a["Addresses"] and (networks is None or a["Network"]["ID"] in networks)}


def on_node(task: Obj) -> bool:
    """Placed on a node and not yet finished there."""
    return bool(task.get("NodeID")) and state_index(task["Status"]["State"]) >= state_index(
        "assigned") and task["Status"]["State"] not in TERMINAL


def compute_view(store: BaseStore, node: Obj) -> nv.NodeView:
    """What one node must know: its tasks, and the networks they are on, with everything there."""
    node_id = node["ID"]
    services = {s["ID"]: s for s in store.peek("service")}
    local = [t for t in store.peek("task") if t.get("NodeID") == node_id and on_node(t)]
    view = nv.empty_view({"id": node_id, "name": node["Description"]["Hostname"],
                          "addr": node["Status"]["Addr"]})
    view["revision"] = store.revision
    network_ids = {a["Network"]["ID"] for t in local for a in t.get("NetworksAttachments", [])}
    for net_id in sorted(network_ids):
        net = store.get("network", net_id)
        if net is None:
            continue
        config = net["IPAMOptions"]["Configs"][0]
        view["networks"][net_id] = {
            "id": net_id, "name": net["Spec"]["Name"], "subnet": config["Subnet"],
            "gateway": config["Gateway"],
            "vni": network_vni(net),
            "internal": bool(net["Spec"].get("Internal")),
            "encrypted": "encrypted" in net["Spec"].get("DriverConfiguration", {}).get(
                "Options", {}),
        }
    networks = set(view["networks"])
    for task in local:
        svc = services.get(task["ServiceID"])
        svc_name = svc["Spec"]["Name"] if svc else task["ServiceID"]
        container = task["Spec"].get("ContainerSpec", {})
        view["tasks"][task["ID"]] = {
            "id": task["ID"], "name": f"{svc_name}.{task.get('Slot') or node_id}",
            "service_id": task["ServiceID"], "service_name": svc_name,
            "slot": task.get("Slot", 0), "desired_state": task["DesiredState"],
            "image": container.get("Image", ""), "command": task_command(task["Spec"]),
            "env": list(container.get("Env") or []), "dir": container.get("Dir") or "",
            "dns": {key.lower(): list((container.get("DNSConfig") or {}).get(key) or [])
                    for key in ("Nameservers", "Search", "Options")},
            "addrs": _addrs(task, networks),
        }
    if not networks:
        return view
    peer_ids = set()
    for task in store.peek("task"):
        if not on_node(task):
            continue
        addrs = _addrs(task, networks)
        if not addrs:
            continue
        svc = services.get(task["ServiceID"])
        running = task["Status"]["State"] == "running" and task["DesiredState"] == "running"
        view["endpoints"][task["ID"]] = {
            "id": task["ID"],
            "name": f"{svc['Spec']['Name'] if svc else task['ServiceID']}."
                    f"{task.get('Slot') or task['NodeID']}",
            "service_id": task["ServiceID"], "node_id": task["NodeID"],
            "state": task["Status"]["State"], "healthy": running, "addrs": addrs,
        }
        peer_ids.add(task["NodeID"])
    for peer_id in sorted(peer_ids):
        peer = store.get("node", peer_id)
        if peer is not None:
            view["peers"][peer_id] = {"id": peer_id, "name": peer["Description"]["Hostname"],
                                      "addr": peer["Status"]["Addr"]}
    for svc in services.values():
        svc_nets = [a["Target"] for a in svc["Spec"]["TaskTemplate"]["Networks"]
                    if a["Target"] in networks]
        if not svc_nets:
            continue
        view["services"][svc["ID"]] = {
            "id": svc["ID"], "name": svc["Spec"]["Name"],
            "endpoint_mode": svc["Spec"]["EndpointSpec"]["Mode"],
            "vips": {v["NetworkID"]: v["Addr"].split("/")[0]
                     for v in svc.get("Endpoint", {}).get("VirtualIPs", [])
                     if v["NetworkID"] in networks},
            "aliases": {a["Target"]: list(a.get("Aliases") or [])
                        for a in svc["Spec"]["TaskTemplate"]["Networks"]
                        if a["Target"] in networks},
            "ports": list(svc["Spec"]["EndpointSpec"].get("Ports") or []),
        }
    return view


class Dispatcher:
    def __init__(self, store: BaseStore, manager_addr: str) -> None:
        self.store = store
        self.manager_addr = manager_addr  # "198.18.0.11:2377": the agent there is a manager
        self.sessions: dict[str, Session] = {}
        self._down_timers: dict[str, asyncio.TimerHandle] = {}
        self._ids = itertools.count()

    def startup(self) -> None:
        """After a manager restart no node is known to be up until its agent reconnects."""
        with self.store.tx() as tx:
            for node in self.store.peek("node"):
                if node["Status"]["State"] == "ready":
                    node = copy.deepcopy(node)
                    node["Status"]["State"] = "unknown"
                    node["Status"]["Message"] = "waiting for the agent to reconnect"
                    tx.update("node", node)

    # --- pushing views ---

    async def push(self) -> None:
        for session in list(self.sessions.values()):
            node = self.store.get("node", session.node_id)
            if node is None:
                continue
            new = compute_view(self.store, node)
            if session.sent is None:
                msg: dict[str, Any] = {"type": "snapshot", "view": new}
            else:
                delta = nv.diff(session.sent, new)
                if delta is None:
                    continue
                msg = {"type": "delta", "delta": delta}
            session.sent = new
            try:
                await session.ws.send_json(msg)
            except (ConnectionError, RuntimeError) as exc:
                log.info("node %s: send failed (%s); it will get a snapshot on reconnect",
                         session.node_id, exc)

    # --- the session ---

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=64 << 20)
        await ws.prepare(request)
        first = await ws.receive_json(timeout=10)
        if first.get("type") != "register":
            await ws.close(message=b"expected register")
            return ws
        node_id = self._register(first)
        session = Session(node_id, ws)
        old = self.sessions.get(node_id)
        if old is not None:
            await old.ws.close(message=b"replaced by a new session")
        self.sessions[node_id] = session
        timer = self._down_timers.pop(node_id, None)
        if timer:
            timer.cancel()
        await ws.send_json({"type": "registered", "node_id": node_id})
        log.info("node %s (%s) connected", first.get("hostname"), node_id)
        self.wake()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = msg.json()
                if data.get("type") == "status":
                    self._report(node_id, data.get("tasks", []))
                elif data.get("type") == "reply":
                    fut = session.replies.pop(data.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(data.get("body"))
        finally:
            for fut in session.replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"node {node_id} disconnected"))
            if self.sessions.get(node_id) is session:
                del self.sessions[node_id]
                loop = asyncio.get_running_loop()
                self._down_timers[node_id] = loop.call_later(DOWN_GRACE, self._mark_down, node_id)
            log.info("node %s disconnected", node_id)
        return ws

    wake: Any = staticmethod(lambda: None)  # set by the manager: run the controllers again

    def _register(self, msg: dict[str, Any]) -> str:
        node_id = msg.get("node_id") or new_id()
        addr = str(msg.get("addr", ""))
        role = "manager" if addr and self.manager_addr.split(":")[0] == addr else "worker"
        with self.store.tx() as tx:
            node = tx.get("node", node_id)
            if node is None:
                node = new_node(node_id, str(msg.get("hostname", "")), addr, role,
                                msg.get("resources") or {})
                tx.create("node", node)
            node["Description"]["Hostname"] = str(msg.get("hostname", ""))
            node["Description"]["Resources"] = msg.get("resources") or {}
            node["Status"] = {"State": "ready", "Addr": addr}
            if node["Spec"]["Role"] == "manager":
                node["ManagerStatus"] = {"Leader": True, "Reachability": "reachable",
                                         "Addr": self.manager_addr}
            tx.update("node", node)
        return node_id

    def _mark_down(self, node_id: str) -> None:
        self._down_timers.pop(node_id, None)
        if node_id in self.sessions:
            return
        with self.store.tx() as tx:
            node = tx.get("node", node_id)
            if node is not None:
                node["Status"]["State"] = "down"
                node["Status"]["Message"] = "heartbeat failure"
                if "ManagerStatus" in node:
                    node["ManagerStatus"]["Reachability"] = "unreachable"
                tx.update("node", node)

    def _report(self, node_id: str, reports: list[dict[str, Any]]) -> None:
        """Task state from the agent. States only move forward; a finished task stays so."""
        with self.store.tx() as tx:
            for report in reports:
                task = tx.get("task", str(report.get("id")))
                state = report.get("state")
                if task is None or task.get("NodeID") != node_id or state not in nv_states:
                    continue
                current = task["Status"]["State"]
                if current in TERMINAL or state_index(state) < state_index(current):
                    continue
                task["Status"] = {"Timestamp": now(), "State": state,
                                  "Message": str(report.get("message", state))}
                if report.get("err"):
                    task["Status"]["Err"] = str(report["err"])
                container: Obj = {"ContainerID": str(report.get("netns", ""))}
                if report.get("pid"):
                    container["PID"] = int(report["pid"])
                if report.get("exit_code") is not None:
                    container["ExitCode"] = int(report["exit_code"])
                task["Status"]["ContainerStatus"] = container
                tx.update("task", task)

    # --- requests to agents (logs) ---

    async def ask(self, node_id: str, body: dict[str, Any], timeout: float = 10.0) -> Any:
        session = self.sessions.get(node_id)
        if session is None:
            raise ConnectionError(f"node {node_id} is not connected")
        req_id = f"r{next(self._ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        session.replies[req_id] = fut
        await session.ws.send_json({"type": "request", "id": req_id, "body": body})
        return await asyncio.wait_for(fut, timeout)


nv_states = frozenset({"accepted", "preparing", "ready", "starting", "running", "complete",
                       "shutdown", "failed", "rejected"})
