"""What `network inspect` shows of an encrypted network: per node, whether encryption is up.

For every node of the cluster: whether it can encrypt at all (and if not, why: it then gets no
task of the network), its tunnel address, whether it carries the network (has a task on it),
and for a node that carries it, asked live over its session: its WireGuard interface, each
peer on the network configured or not, with its endpoint and last handshake. "Peers" is
Docker's field of the same name: the nodes that carry the network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.manager import Manager, encryption
from shoal.manager.dispatcher import on_node
from shoal.model.objects import Obj

ASK_TIMEOUT = 2.0


def is_encrypted(net: Obj) -> bool:
    return "encrypted" in net["Spec"].get("DriverConfiguration", {}).get("Options", {})


def carriers(m: Manager, net_id: str) -> set[str]:
    """Nodes with a task on the network."""
    return {t["NodeID"] for t in m.store.peek("task") if on_node(t)
            and any(a["Network"]["ID"] == net_id for a in t.get("NetworksAttachments", []))}


async def _live(m: Manager, node_id: str, net_id: str) -> dict[str, Any]:
    try:
        reply = await m.dispatcher.ask(node_id, {"op": "encryption", "network": net_id},
                                       ASK_TIMEOUT)
    except (ConnectionError, TimeoutError) as exc:
        return {"Up": False, "Error": f"node unreachable: {exc or 'timed out'}"}
    return reply if isinstance(reply, dict) else {"Up": False, "Error": "no answer"}


async def status(m: Manager, net: Obj) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(the "Encryption" field, Docker's "Peers" field) of a network's inspect."""
    nodes = sorted(m.store.peek("node"), key=lambda n: n["Description"]["Hostname"])
    on = carriers(m, net["ID"])
    live = await asyncio.gather(*(_live(m, n["ID"], net["ID"]) for n in nodes if n["ID"] in on))
    by_node = dict(zip([n["ID"] for n in nodes if n["ID"] in on], live, strict=True))
    rows = []
    for node in nodes:
        rec = encryption.of(node)
        row: dict[str, Any] = {
            "Node": node["ID"], "Name": node["Description"]["Hostname"],
            "Ready": encryption.ready(node), "Error": encryption.why_not(node),
            "TunnelAddr": rec.get("TunnelAddr", ""), "Carrying": node["ID"] in on}
        if node["ID"] in on:
            agent = by_node[node["ID"]]
            row["Up"] = bool(agent.get("Up")) and bool(agent.get("Ready"))
            row["Interface"] = agent.get("Interface", "")
            row["Peers"] = agent.get("Peers", [])
            if agent.get("Error"):
                row["Error"] = agent["Error"]
        rows.append(row)
    peers = [{"Name": n["Description"]["Hostname"], "IP": n["Status"].get("Addr", "")}
             for n in nodes if n["ID"] in on]
    return {"Enabled": True, "Nodes": rows}, peers
