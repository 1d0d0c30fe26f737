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
import time
from typing import Any

from aiohttp import WSMsgType, web

from shoal import ca
from shoal.errors import InvalidArgument
from shoal.manager import encryption, keys
from shoal.manager.allocator import ingress_network, network_vni, publishes
from shoal.model import view as nv
from shoal.model.objects import TERMINAL, Obj, new_id, new_node, now, state_index, task_command
from shoal.store.base import BaseStore

log = logging.getLogger("shoal.dispatcher")

DOWN_GRACE = 3.0  # seconds a node may be without a session before it is marked down
HEARTBEAT = 2.0  # WebSocket ping period; a missed pong closes the session
# What an agent may say of a task; the states before it (new .. assigned) are the manager's.
REPORTABLE = frozenset({"accepted", "preparing", "ready", "starting", "running", "complete",
                        "shutdown", "failed", "rejected"})
RESTART_GRACE = 10.0  # after a manager restart, seconds an agent has to reconnect


class Session:
    def __init__(self, node_id: str, ws: web.WebSocketResponse) -> None:
        self.node_id = node_id
        self.ws = ws
        self.sent: nv.NodeView | None = None
        self.replies: dict[str, asyncio.Future[Any]] = {}
        self.expiry: asyncio.TimerHandle | None = None


DEFAULT_STOP_GRACE_NS = 10_000_000_000  # Docker's


def healthcheck(container: Obj) -> nv.HealthCheck | None:
    """The task's health check in seconds, or None when it has none (or Test is NONE)."""
    hc = container.get("Healthcheck") or {}
    test = list(hc.get("Test") or [])
    if not test or test[0] == "NONE" or test == ["inherit"]:
        return None
    return {"test": test, "interval": (hc.get("Interval") or 30_000_000_000) / 1e9,
            "timeout": (hc.get("Timeout") or 30_000_000_000) / 1e9,
            "retries": hc.get("Retries") or 3,
            "start_period": (hc.get("StartPeriod") or 0) / 1e9}


def _attachment(addr: str) -> nv.Attachment:
    ip, prefix = addr.split("/")
    return {"ip": ip, "prefixlen": int(prefix), "mac": nv.mac_for(ip)}


def _addrs(task: Obj) -> dict[str, nv.Attachment]:
    return {a["Network"]["ID"]: _attachment(a["Addresses"][0])
            for a in task.get("NetworksAttachments", []) if a["Addresses"]}


def _ingress_addr(node: Obj, ingress: Obj | None) -> str:
    for att in node.get("Attachments", []):
        if ingress is not None and att["Network"]["ID"] == ingress["ID"]:
            return att["Addresses"][0].split("/")[0]
    return ""


def _peer(node: Obj, ingress: Obj | None) -> nv.PeerEntry:
    enc = encryption.of(node)
    return {"id": node["ID"], "name": node["Description"]["Hostname"],
            "addr": node["Status"]["Addr"], "ingress_addr": _ingress_addr(node, ingress),
            "wg_key": enc.get("PublicKey", "") if enc.get("Ready") else "",
            "wg_port": int(enc.get("Port") or 0), "tunnel_addr": enc.get("TunnelAddr", "")}


def on_node(task: Obj) -> bool:
    """Placed on a node and not yet finished there."""
    return bool(task.get("NodeID")) and state_index(task["Status"]["State"]) >= state_index(
        "assigned") and task["Status"]["State"] not in TERMINAL


def _healthy(task: Obj) -> bool:
    """A backend for the VIP and DNS: running, meant to run, and healthy if it has a check."""
    if task["Status"]["State"] != "running" or task["DesiredState"] != "running":
        return False
    if healthcheck(task["Spec"].get("ContainerSpec", {})) is None:
        return True
    return task["Status"].get("ContainerStatus", {}).get("Health") == "healthy"


def _network_entry(net: Obj) -> nv.NetworkEntry:
    config = net["IPAMOptions"]["Configs"][0]
    return {
        "id": net["ID"], "name": net["Spec"]["Name"], "subnet": config["Subnet"],
        "gateway": config["Gateway"], "vni": network_vni(net),
        "internal": bool(net["Spec"].get("Internal")),
        "ingress": bool(net["Spec"].get("Ingress")),
        "encrypted": "encrypted" in net["Spec"].get("DriverConfiguration", {}).get("Options", {}),
    }


def _task_entry(task: Obj, svc_name: str) -> nv.TaskEntry:
    container = task["Spec"].get("ContainerSpec", {})
    return {
        "id": task["ID"], "name": f"{svc_name}.{task.get('Slot') or task['NodeID']}",
        "service_id": task["ServiceID"], "service_name": svc_name,
        "slot": task.get("Slot", 0), "desired_state": task["DesiredState"],
        "image": container.get("Image", ""), "command": task_command(task["Spec"]),
        "env": list(container.get("Env") or []), "dir": container.get("Dir") or "",
        "dns": {key.lower(): list((container.get("DNSConfig") or {}).get(key) or [])
                for key in ("Nameservers", "Search", "Options")},
        "healthcheck": healthcheck(container),
        "stop_grace": container.get("StopGracePeriod", DEFAULT_STOP_GRACE_NS) / 1e9,
        "addrs": _addrs(task),
    }


class ViewIndex:
    """The cluster cut by network, built once per push and shared by every node's view, so a
    push costs the size of the cluster once plus the size of each view, not nodes x cluster."""

    def __init__(self, store: BaseStore) -> None:
        self.revision = store.revision
        self.ingress = ingress_network(store)
        self.nodes = {n["ID"]: n for n in store.peek("node")}
        cluster = next(iter(store.peek("cluster")), None)
        key = keys.of(cluster) if cluster is not None else {}
        self.psk: nv.KeyEntry | None = {"id": "psk", "key": key["Key"],
                                        "generation": int(key["Generation"])} \
            if key.get("Key") else None
        self.networks = {n["ID"]: _network_entry(n) for n in store.peek("network")}
        services = {s["ID"]: s for s in store.peek("service")}
        self.names = {sid: s["Spec"]["Name"] for sid, s in services.items()}
        self.local: dict[str, list[Obj]] = {}
        self.endpoints: dict[str, list[tuple[nv.EndpointEntry, nv.Attachment]]] = {}
        self.nodes_on: dict[str, set[str]] = {}
        for task in store.peek("task"):
            if not on_node(task):
                continue
            self.local.setdefault(task["NodeID"], []).append(task)
            addrs = _addrs(task)
            if not addrs:
                continue
            base: nv.EndpointEntry = {
                "id": task["ID"],
                "name": f"{self.names.get(task['ServiceID'], task['ServiceID'])}."
                        f"{task.get('Slot') or task['NodeID']}",
                "service_id": task["ServiceID"], "node_id": task["NodeID"],
                "state": task["Status"]["State"], "healthy": _healthy(task), "addrs": {}}
            for net_id, att in addrs.items():
                self.endpoints.setdefault(net_id, []).append((base, att))
                self.nodes_on.setdefault(net_id, set()).add(task["NodeID"])
        self.services_on: dict[str, list[tuple[Obj, str, list[str]]]] = {}
        for svc in services.values():
            vips = {v["NetworkID"]: v["Addr"].split("/")[0]
                    for v in svc.get("Endpoint", {}).get("VirtualIPs", [])}
            nets = {a["Target"]: list(a.get("Aliases") or [])
                    for a in svc["Spec"]["TaskTemplate"]["Networks"]}
            if self.ingress is not None and publishes(svc):
                nets[self.ingress["ID"]] = []  # published: on the mesh of every node
            for net_id, aliases in nets.items():
                self.services_on.setdefault(net_id, []).append(
                    (svc, vips.get(net_id, ""), aliases))

    def view(self, node: Obj) -> nv.NodeView:
        """What one node must know: its tasks, the networks they are on, all that is there."""
        view = nv.empty_view(_peer(node, self.ingress))
        view["revision"] = self.revision
        local = self.local.get(node["ID"], [])
        wanted = {a["Network"]["ID"] for t in local for a in t.get("NetworksAttachments", [])}
        if self.ingress is not None and view["node"]["ingress_addr"]:
            wanted.add(self.ingress["ID"])  # every node answers published ports
        networks = {n: self.networks[n] for n in sorted(wanted) if n in self.networks}
        view["networks"] = networks
        for task in local:
            entry = _task_entry(task, self.names.get(task["ServiceID"], task["ServiceID"]))
            entry["addrs"] = {n: a for n, a in entry["addrs"].items() if n in networks}
            view["tasks"][task["ID"]] = entry
        peer_ids: set[str] = set()
        endpoints = view["endpoints"]
        services = view["services"]
        for net_id in networks:
            for base, att in self.endpoints.get(net_id, []):
                entry = endpoints.get(base["id"])
                if entry is None:
                    entry = endpoints[base["id"]] = {**base, "addrs": {}}
                entry["addrs"][net_id] = att
            peer_ids |= self.nodes_on.get(net_id, set())
            for svc, vip, aliases in self.services_on.get(net_id, []):
                sentry = services.get(svc["ID"])
                if sentry is None:
                    sentry = services[svc["ID"]] = {
                        "id": svc["ID"], "name": svc["Spec"]["Name"],
                        "endpoint_mode": svc["Spec"]["EndpointSpec"]["Mode"],
                        "vips": {}, "aliases": {},
                        "ports": list(svc.get("Endpoint", {}).get("Ports") or []),
                        "labels": dict(svc["Spec"].get("Labels") or {})}
                if vip:
                    sentry["vips"][net_id] = vip
                sentry["aliases"][net_id] = aliases
        if self.ingress is not None and self.ingress["ID"] in networks:
            # On ingress every node is a peer: any of them may forward a published port.
            peer_ids |= {n for n, node in self.nodes.items()
                         if node["Status"]["State"] == "ready"
                         and _ingress_addr(node, self.ingress)}
        for peer_id in sorted(peer_ids):
            peer = self.nodes.get(peer_id)
            if peer is not None:
                view["peers"][peer_id] = _peer(peer, self.ingress)
        if self.psk is not None and any(n["encrypted"] for n in networks.values()):
            view["keys"]["psk"] = self.psk
        return view


class Dispatcher:
    def __init__(self, store: BaseStore, manager_addr: str) -> None:
        self.store = store
        self.manager_addr = manager_addr  # "198.18.0.11:2377": the agent there is a manager
        self.sessions: dict[str, Session] = {}
        self._down_timers: dict[str, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        self.secured = False  # set by the manager when it has a CA: sessions need node certs
        self.leader_id = ""  # the node this manager runs on (its certificate's), when known

    def startup(self) -> None:
        """After a manager restart no node is known to be up until its agent reconnects;
        one that has not reconnected after a longer grace is down (its tasks move)."""
        loop = asyncio.get_running_loop()
        for node in self.store.peek("node"):
            self._down_timers[node["ID"]] = loop.call_later(
                RESTART_GRACE, self._mark_down, node["ID"])
        with self.store.tx() as tx:
            for node in self.store.peek("node"):
                if node["Status"]["State"] == "ready":
                    node = copy.deepcopy(node)
                    node["Status"]["State"] = "unknown"
                    node["Status"]["Message"] = "waiting for the agent to reconnect"
                    tx.update("node", node)

    # --- pushing views ---

    async def push(self) -> None:
        if not self.sessions:
            return
        index = ViewIndex(self.store)
        for session in list(self.sessions.values()):
            node = index.nodes.get(session.node_id)
            if node is None:
                continue
            new = index.view(node)
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
        ident = request.get(ca.IDENTITY)
        if self.secured:
            # The node is who its certificate says, never what its message claims.
            ident = ca.authorize(request, ca.MANAGER, ca.WORKER)
            if ident is None:
                raise InvalidArgument("the session is for agents, over the cluster port")
            if self.store.get("node", ident.node_id) is None:
                raise ca.CertificateRevoked(f"{ident}: node removed from the cluster")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=64 << 20)
        await ws.prepare(request)
        first = await ws.receive_json(timeout=10)
        if first.get("type") != "register":
            await ws.close(message=b"expected register")
            return ws
        node_id = self._register(first, ident.node_id if ident is not None else None)
        session = Session(node_id, ws)
        if ident is not None:
            self.renewed(node_id, ident.not_after.timestamp(), session)
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
                elif data.get("type") == "encryption":
                    self._encryption(node_id, data.get("encryption"))
                elif data.get("type") == "reply":
                    fut = session.replies.pop(data.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(data.get("body"))
        finally:
            if session.expiry is not None:
                session.expiry.cancel()
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

    def _register(self, msg: dict[str, Any], node_id: str | None = None) -> str:
        """Mark the node ready. `node_id` is the certificate's; without a CA (unit tests)
        the message names the node."""
        node_id = node_id or msg.get("node_id") or new_id()
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
            encryption.set_record(node, encryption.record(node, msg.get("encryption"),
                                                          list(self.store.peek("node"))))
            node["ManagerStatus"] = self.manager_status(node)
            if not node["ManagerStatus"]:
                del node["ManagerStatus"]
            tx.update("node", node)
        return node_id

    def manager_status(self, node: Obj) -> Obj:
        """Docker's ManagerStatus. One manager process serves the cluster (the SQLite store);
        another node with the manager role has its certificate and rights but runs no
        manager, and says so: unreachable."""
        if node["Spec"]["Role"] != "manager":
            return {}
        leader = node["ID"] == self.leader_id if self.leader_id else \
            node["Status"].get("Addr") == self.manager_addr.rpartition(":")[0]
        port = self.manager_addr.rpartition(":")[2]
        return {"Leader": leader, "Reachability": "reachable" if leader else "unreachable",
                "Addr": self.manager_addr if leader else f"{node['Status'].get('Addr')}:{port}"}

    def _encryption(self, node_id: str, report: Any) -> None:
        """The agent's encryption changed (wireguard-go died or came back)."""
        with self.store.tx() as tx:
            node = tx.get("node", node_id)
            if node is not None:
                rec = encryption.record(node, report, list(self.store.peek("node")))
                if rec != encryption.of(node):
                    encryption.set_record(node, rec)
                    tx.update("node", node)

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
                if task is None or task.get("NodeID") != node_id or state not in REPORTABLE:
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
                if report.get("health") in ("starting", "healthy", "unhealthy"):
                    container["Health"] = report["health"]
                task["Status"]["ContainerStatus"] = container
                tx.update("task", task)

    # --- certificates ---

    def drop(self, node_id: str) -> None:
        """Close the node's session at once: it was removed and its certificates revoked, so
        it cannot open another."""
        session = self.sessions.get(node_id)
        if session is not None:
            asyncio.ensure_future(session.ws.close(message=b"certificate revoked"))

    def renewed(self, node_id: str, not_after: float, session: Session | None = None) -> None:
        """The session lives as long as the node's newest certificate: a renewal extends it
        (the node renews at 50-80 % of the life), an expired one ends it."""
        session = session or self.sessions.get(node_id)
        if session is None:
            return
        if session.expiry is not None:
            session.expiry.cancel()
        ws = session.ws
        session.expiry = asyncio.get_running_loop().call_later(
            max(0.0, not_after - time.time()),
            lambda: asyncio.ensure_future(ws.close(message=b"certificate expired")))

    def ask_renew(self, node_id: str) -> None:
        """The node's role changed: it renews now and gets a certificate with the new OU."""
        session = self.sessions.get(node_id)
        if session is not None:
            asyncio.ensure_future(session.ws.send_json({"type": "renew"}))

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
