"""Published ports on the node: the routing mesh's entry, in the node's own namespace.

    table ip shoal_ingress
      chain prerouting   nat prerouting: ip daddr <node> meta l4proto . th dport vmap {...}
      chain p_<proto>_<port>   dnat to a healthy task's ingress address and target port

Ingress mode: every node answers, and picks any healthy task of the service on any node,
reached over the ingress network. Host mode: only a node running a task answers, and only with
its own tasks. Only DNAT, never SNAT: the task sees the client's address, and its reply goes
back through the node that forwarded it (see plan.plan_reply_routes and the steering marks in
lb.py). A published port with no healthy task has no rule, so the node's own stack refuses it
at once (TCP reset, ICMP port unreachable).

The table is small (one chain per published port), so each change rewrites it whole in one
atomic transaction; conntrack keeps established connections on their backend.
"""

from __future__ import annotations

from shoal.dataplane.nft import Nft
from shoal.model.view import NodeView

TABLE = "ip shoal_ingress"
Published = dict[tuple[str, int], tuple[tuple[str, int], ...]]  # (proto, port) -> backends


def render(view: NodeView) -> Published:
    ingress_id = next((i for i, n in view["networks"].items() if n.get("ingress")), None)
    if ingress_id is None:
        return {}
    node_id = view["node"]["id"]
    out: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for svc in view["services"].values():
        for port in svc["ports"]:
            key = (port["Protocol"], port["PublishedPort"])
            host_mode = port["PublishMode"] == "host"
            backends = out.setdefault(key, []) if not host_mode else None
            for ep in view["endpoints"].values():
                att = ep["addrs"].get(ingress_id)
                if ep["service_id"] != svc["id"] or not ep["healthy"] or att is None:
                    continue
                if host_mode:
                    if ep["node_id"] != node_id:
                        continue
                    backends = out.setdefault(key, [])
                assert backends is not None
                backends.append((att["ip"], port["TargetPort"]))
    return {k: tuple(sorted(v)) for k, v in out.items() if v}


def script(node_addr: str, published: Published) -> str:
    lines = [f"table {TABLE} {{}}", f"delete table {TABLE}", f"table {TABLE} {{",
             "  chain prerouting {", "    type nat hook prerouting priority -100; policy accept;"]
    if published:
        verdicts = ", ".join(f"{proto} . {port} : goto p_{proto}_{port}"
                             for proto, port in sorted(published))
        lines.append(f"    ip daddr {node_addr} meta l4proto . th dport vmap {{ {verdicts} }}")
    lines.append("  }")
    for (proto, port), backends in sorted(published.items()):
        if len(backends) == 1:
            target = f"{backends[0][0]}:{backends[0][1]}"
        else:
            pairs = ", ".join(f"{i} : {ip} . {p}" for i, (ip, p) in enumerate(backends))
            target = f"numgen random mod {len(backends)} map {{ {pairs} }}"
        lines += [f"  chain p_{proto}_{port} {{",
                  f"    meta l4proto {proto} dnat ip to {target}", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


class Ingress:
    """Keeps the node's published-port table matching the view."""

    def __init__(self) -> None:
        self._nft: Nft | None = None
        self._programmed: tuple[str, Published] | None = None

    def sync(self, view: NodeView) -> bool:
        wanted = (view["node"]["addr"], render(view))
        if wanted == self._programmed:
            return False
        if self._nft is None:
            self._nft = Nft()
        self._programmed = None
        self._nft.run(script(*wanted))
        self._programmed = wanted
        return True

    def close(self) -> None:
        """Remove the table and let go of the context."""
        if self._nft is not None:
            self._nft.run(f"table {TABLE} {{}}\ndelete table {TABLE}\n")
            self._nft.close()
            self._nft = None
            self._programmed = None
