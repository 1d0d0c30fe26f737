"""What the manager keeps of each node's encryption (docs/encryption.md).

A node's agent reports {"ready", "pubkey", "port", "error", "interface"} when it registers and
whenever that changes; it is kept at Node.Description.Shoal.Encryption with the node's tunnel
address, which the manager hands out here: the lowest free /32 of TUNNEL_NET, kept for the
node's life (its peers' WireGuard allowed-ips and VXLAN FDB entries name it).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from shoal.model.objects import Obj
from shoal.model.view import TUNNEL_NET as _TUNNEL_NET

TUNNEL_NET = ipaddress.IPv4Network(_TUNNEL_NET)
NOT_REPORTED = "the node's agent has not reported its encryption (an older agent?)"


def of(node: Obj) -> Obj:
    """The node's encryption record, {} if none."""
    return ((node.get("Description") or {}).get("Shoal") or {}).get("Encryption") or {}


def ready(node: Obj) -> bool:
    return bool(of(node).get("Ready"))


def why_not(node: Obj) -> str:
    """Why a node cannot carry an encrypted network ("" if it can)."""
    enc = of(node)
    if not enc:
        return NOT_REPORTED
    return "" if enc.get("Ready") else str(enc.get("Error") or "encryption is not up")


def _tunnel_addr(node_id: str, nodes: list[Obj]) -> str:
    taken = {of(n).get("TunnelAddr") for n in nodes if n["ID"] != node_id}
    for host in TUNNEL_NET.hosts():
        if str(host) not in taken:
            return str(host)
    raise RuntimeError(f"no tunnel address left in {TUNNEL_NET}")


def record(node: Obj, report: Any, nodes: list[Obj]) -> Obj:
    """The node's new encryption record from an agent's report (missing or malformed counts
    as not ready). The tunnel address is kept if it has one."""
    report = report if isinstance(report, dict) else {}
    ok = bool(report.get("ready")) and bool(report.get("pubkey"))
    port = report.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        port, ok = 0, False
    error = "" if ok else str(report.get("error") or NOT_REPORTED)
    return {"Ready": ok, "PublicKey": str(report.get("pubkey") or "") if ok else "",
            "Port": port, "Interface": str(report.get("interface") or ""), "Error": error,
            "TunnelAddr": of(node).get("TunnelAddr") or _tunnel_addr(node["ID"], nodes)}


def set_record(node: Obj, rec: Obj) -> None:
    node["Description"].setdefault("Shoal", {})["Encryption"] = rec
