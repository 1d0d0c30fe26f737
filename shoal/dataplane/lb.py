"""Service VIPs, balanced in the kernel inside each task's own namespace.

Like Docker's IPVS-in-the-sandbox, every task namespace holds the load balancer for the VIPs it
can see, as one nftables table:

    table ip shoal
      map vips      VIP -> goto vip_<addr>          (a service with a healthy task)
      set dead      VIPs with no healthy task       (refused at once, never a hang)
      chain nat_output     nat output hook:    ip daddr vmap @vips
      chain vip_<addr>     dnat to numgen random mod N map { 0 : task, 1 : task, ... }
      chain filter_output  filter output hook: ip daddr @dead -> reject (tcp reset)
      map ingress_marks    ingress MAC of a node -> mark  (tasks on the ingress network)
      chain steer_in / steer_out    a connection a node forwarded is marked with that node,
                           and its packets routed back through it (plan.plan_reply_routes)

The choice is made on a connection's first packet in the caller's namespace, so conntrack in
that same namespace reverses it on the way back: no SNAT anywhere, and the backend sees the
caller's own address (which Docker's VIP path SNATs away, moby#39665). Every port is forwarded,
as Docker does for VIPs. A change rewrites only the VIPs that changed, so its cost does not
grow with the number of services (the kube-proxy nftables design).

`render` is pure (view -> wanted state per task), `script` is pure (old, new -> nft text), and
`LoadBalancer` applies scripts through a libnftables context kept per task namespace.
"""

from __future__ import annotations

import logging
import threading

from shoal.dataplane.nft import Nft
from shoal.dataplane.plan import plan_reply_routes
from shoal.model.view import NodeView, mac_for

log = logging.getLogger("shoal.dataplane.lb")

TABLE = "ip shoal"
VipTable = dict[str, tuple[str, ...]]  # VIP -> healthy backend addresses (sorted); () = dead
Marks = dict[str, int]  # a node's ingress MAC -> the mark of connections it forwarded

SKELETON = f"""table {TABLE} {{}}
delete table {TABLE}
table {TABLE} {{
    map vips {{ type ipv4_addr : verdict; }}
    set dead {{ type ipv4_addr; }}
    chain nat_output {{
        type nat hook output priority -100; policy accept;
        ip daddr vmap @vips
    }}
    chain filter_output {{
        type filter hook output priority 0; policy accept;
        ip daddr @dead meta l4proto tcp reject with tcp reset
        ip daddr @dead reject
    }}
    map ingress_marks {{ type ether_addr : mark; }}
    chain steer_in {{
        type filter hook prerouting priority -150; policy accept;
        ct state new ct mark set ether saddr map @ingress_marks
    }}
    chain steer_out {{
        type route hook output priority -150; policy accept;
        ct mark != 0 meta mark set ct mark
    }}
}}
"""


def render(view: NodeView, task_id: str) -> VipTable:
    """The VIPs one local task sees, each with its healthy backends on the VIP's network."""
    task = view["tasks"].get(task_id)
    if task is None:
        return {}
    networks = set(task["addrs"])
    backends: dict[tuple[str, str], list[str]] = {}
    for ep in view["endpoints"].values():
        if not ep["healthy"]:
            continue
        for net_id, att in ep["addrs"].items():
            if net_id in networks:
                backends.setdefault((ep["service_id"], net_id), []).append(att["ip"])
    out: VipTable = {}
    for svc in view["services"].values():
        if svc["endpoint_mode"] != "vip":
            continue
        for net_id, vip in svc["vips"].items():
            if net_id in networks:
                out[vip] = tuple(sorted(backends.get((svc["id"], net_id), [])))
    return out


def render_marks(view: NodeView, task_id: str) -> Marks:
    """For a task on the ingress network: every node's ingress MAC and its mark."""
    return {mac_for(r.gateway): r.mark for r in plan_reply_routes(view["tasks"][task_id], view)} \
        if task_id in view["tasks"] else {}


def chain(vip: str) -> str:
    return "vip_" + vip.replace(".", "_")


def _dispatch_rule(vip: str, backends: tuple[str, ...]) -> str:
    if len(backends) == 1:
        target = backends[0]
    else:
        pairs = ", ".join(f"{i} : {addr}" for i, addr in enumerate(backends))
        target = f"numgen random mod {len(backends)} map {{ {pairs} }}"
    return f"add rule {TABLE} {chain(vip)} dnat to {target}\n"


def marks_script(old: Marks, new: Marks) -> str:
    out = [f"delete element {TABLE} ingress_marks {{ {mac} }}\n"
           for mac in sorted(old) if old[mac] != new.get(mac)]
    out += [f"add element {TABLE} ingress_marks {{ {mac} : {mark:#x} }}\n"
            for mac, mark in sorted(new.items()) if old.get(mac) != mark]
    return "".join(out)


def script(old: VipTable | None, new: VipTable) -> str:
    """The nft transaction from old to new; old None means the table is not there yet."""
    out = [SKELETON] if old is None else []
    old = old or {}
    for vip in sorted(old.keys() - new.keys()):
        out.append(f"delete element {TABLE} {'vips' if old[vip] else 'dead'} {{ {vip} }}\n")
        out.append(f"flush chain {TABLE} {chain(vip)}\n")  # a chain must be empty to go
        out.append(f"delete chain {TABLE} {chain(vip)}\n")
    for vip in sorted(new):
        backends, before = new[vip], old.get(vip)
        if before == backends:
            continue
        if before is None:
            out.append(f"add chain {TABLE} {chain(vip)}\n")
        else:
            out.append(f"flush chain {TABLE} {chain(vip)}\n")
            if bool(before) != bool(backends):
                out.append(f"delete element {TABLE} {'vips' if before else 'dead'} {{ {vip} }}\n")
        if backends:
            out.append(_dispatch_rule(vip, backends))
        if before is None or bool(before) != bool(backends):
            if backends:
                out.append(f"add element {TABLE} vips {{ {vip} : goto {chain(vip)} }}\n")
            else:
                out.append(f"add element {TABLE} dead {{ {vip} }}\n")
    return "".join(out)


class LoadBalancer:
    """Keeps the VIP table of every local task namespace matching the view."""

    def __init__(self) -> None:
        self._nft: dict[str, Nft] = {}  # task id -> context in its namespace
        self._programmed: dict[str, tuple[VipTable, Marks]] = {}
        self._lock = threading.Lock()

    def sync(self, view: NodeView, netns_of: dict[str, str]) -> int:
        """Program every task in netns_of (task id -> namespace); returns how many changed."""
        changed = 0
        with self._lock:
            for task_id in list(self._nft):
                if task_id not in netns_of:
                    self._forget(task_id)
            for task_id, netns in netns_of.items():
                changed += self._program(view, task_id, netns)
        return changed

    def program(self, view: NodeView, task_id: str, netns: str) -> bool:
        """One task's table, before its process starts: its first connection to a VIP must
        already be balanced."""
        with self._lock:
            return self._program(view, task_id, netns)

    def _program(self, view: NodeView, task_id: str, netns: str) -> bool:
        wanted = (render(view, task_id), render_marks(view, task_id))
        before = self._programmed.get(task_id)
        if before == wanted:
            return False
        nft = self._nft.get(task_id)
        if nft is None:
            nft = self._nft[task_id] = Nft(netns)
            before = None
        text = script(before[0] if before else None, wanted[0]) + marks_script(
            before[1] if before else {}, wanted[1])
        try:
            nft.run(text)
        except Exception:
            # Start this namespace over on the next sync, from the skeleton.
            self._forget(task_id)
            raise
        self._programmed[task_id] = wanted
        log.debug("lb %s: %d VIPs programmed", task_id[:12], len(wanted[0]))
        return True

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        nft = self._nft.pop(task_id, None)
        if nft is not None:
            nft.close()
        self._programmed.pop(task_id, None)

    def close(self) -> None:
        with self._lock:
            for task_id in list(self._nft):
                self._forget(task_id)
