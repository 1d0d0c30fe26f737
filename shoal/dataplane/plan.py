"""Desired kernel state rendered from a NodeView: pure functions, no I/O, tested without root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from shoal.dataplane import gateway, names
from shoal.errors import KernelError
from shoal.model.view import NodeView, TaskEntry, mac_for


class FdbEntry(NamedTuple):
    """A remote endpoint: on VXLAN `vni`, `mac` (with address `ip`) lives behind `peer_addr`."""

    vni: int
    mac: str
    ip: str
    peer_addr: str


@dataclass(frozen=True)
class TaskLink:
    """One attachment of a task: a veth pair from the task namespace to a network's bridge."""

    index: int
    network_id: str
    vni: int
    ifname: str  # inside the task namespace
    host_ifname: str  # node side, a port of `bridge`
    bridge: str
    mac: str
    ip: str
    prefixlen: int
    isolated: bool = False  # a port that may talk to the node only (the gateway bridge)
    encrypted: bool = False  # on an encrypted network: a smaller MTU (WireGuard's header)


class Vxlan(NamedTuple):
    """How one network's VXLAN device is made: its local address, UDP port and MTU."""

    local: str
    port: int
    mtu: int
    # The outer UDP checksum. Off inside WireGuard, which authenticates every packet anyway:
    # the TUN device has no checksum offload, so it would cost a software pass per packet.
    checksum: bool = True


def plan_networks(view: NodeView, tunnel_addr: str | None = None) -> dict[int, str]:
    """VNI -> network id of every network this node must carry. An encrypted network only
    when this node can encrypt (`tunnel_addr`): it is never carried in cleartext."""
    return {net["vni"]: net_id for net_id, net in view["networks"].items()
            if tunnel_addr or not net.get("encrypted")}


def plan_vxlan(view: NodeView, underlay: str, tunnel_addr: str | None,
               mtu: int) -> dict[int, Vxlan]:
    """VNI -> its VXLAN device. An encrypted network's runs between tunnel addresses on a
    port of its own, so it is routed through the WireGuard interface, and its MTU leaves room
    for WireGuard's header as well (nothing fragments)."""
    out = {}
    for net in view["networks"].values():
        if not net.get("encrypted"):
            out[net["vni"]] = Vxlan(underlay, names.VXLAN_PORT, mtu)
        elif tunnel_addr:
            out[net["vni"]] = Vxlan(tunnel_addr, names.ENCRYPTED_VXLAN_PORT,
                                    mtu - names.WIREGUARD_OVERHEAD, checksum=False)
    return out


def plan_fdb(view: NodeView, node_id: str) -> set[FdbEntry]:
    """Static FDB/neighbour entries: every endpoint on another node, on each network it shares
    with this node. Endpoints whose node is not among the peers cannot be reached: skipped."""
    local_addr = view["node"]["addr"] if view.get("node") else None
    out: set[FdbEntry] = set()
    for ep in view["endpoints"].values():
        if ep["node_id"] == node_id:
            continue
        peer = view["peers"].get(ep["node_id"])
        if peer is None or not peer.get("addr") or peer["addr"] == local_addr:
            continue
        for net_id, att in ep["addrs"].items():
            net = view["networks"].get(net_id)
            if net is None:
                continue
            # An encrypted network's frames go to the peer's tunnel address (through
            # WireGuard), never to its underlay address; none known: not sent at all.
            dst = peer.get("tunnel_addr") if net.get("encrypted") else peer["addr"]
            if dst:
                out.add(FdbEntry(net["vni"], att["mac"].lower(), att["ip"], dst))
    # On the ingress network every node has an address of its own (on its bridge), which
    # tasks elsewhere answer through when a published port was forwarded by that node.
    ingress = next((n for n in view["networks"].values() if n.get("ingress")), None)
    if ingress is not None:
        for peer in view["peers"].values():
            addr = peer.get("ingress_addr")
            if peer["id"] != node_id and addr and peer.get("addr") and peer["addr"] != local_addr:
                out.add(FdbEntry(ingress["vni"], mac_for(addr), addr, peer["addr"]))
    return out


def plan_node_addrs(view: NodeView) -> dict[int, tuple[str, int, str]]:
    """VNI -> (ip, prefixlen, mac) the node's own bridge holds: only on the ingress network."""
    addr = view["node"].get("ingress_addr") if view.get("node") else None
    out = {}
    for net in view["networks"].values():
        if net.get("ingress") and addr:
            out[net["vni"]] = (addr, int(net["subnet"].split("/")[1]), mac_for(addr))
    return out


def fdb_by_vni(entries: set[FdbEntry]) -> dict[int, dict[str, str]]:
    """VNI -> MAC -> peer address. A MAC claimed twice (a stale endpoint) resolves the same
    way on every run: the last in sorted order wins."""
    out: dict[int, dict[str, str]] = {}
    for e in sorted(entries):
        out.setdefault(e.vni, {})[e.mac] = e.peer_addr
    return out


def neigh_by_vni(entries: set[FdbEntry]) -> dict[int, dict[str, str]]:
    """VNI -> IP -> MAC, answered by the VXLAN device's ARP proxy."""
    out: dict[int, dict[str, str]] = {}
    for e in sorted(entries):
        out.setdefault(e.vni, {})[e.ip] = e.mac
    return out


class ReplyRoute(NamedTuple):
    """A default route in one routing table of a task's namespace. With a mark: a connection
    forwarded to this task by node `gateway` goes back through that node. Without (the main
    table): where everything else goes, the egress gateway if the task has one."""

    mark: int  # conntrack mark of connections that arrived from that node's ingress MAC
    table: int
    gateway: str  # that node's ingress address (main table: the egress gateway's)
    ifname: str  # the task's interface the route leaves by


REPLY_RULE_PRIORITY = 100
MAIN_TABLE = 254


def mark_for(ingress_addr: str) -> int:
    """A small, stable, non-zero number per node: the low 16 bits of its ingress address."""
    parts = [int(p) for p in ingress_addr.split(".")]
    return (parts[2] << 8 | parts[3]) or 0xFFFF


def _ingress_ifname(task: TaskEntry, view: NodeView) -> str | None:
    ingress_id = next((i for i, n in view["networks"].items() if n.get("ingress")), None)
    if ingress_id is None or ingress_id not in task["addrs"]:
        return None
    return names.task_ifname(sorted(task["addrs"]).index(ingress_id))


def plan_reply_routes(task: TaskEntry, view: NodeView) -> list[ReplyRoute]:
    """For a task on the ingress network: a routing table per node that may forward to it.
    Replies must leave through the node that did the DNAT, whose conntrack undoes it; that is
    what lets the task see the client's own address instead of a SNATed one (moby#25526).
    The task's own node is one of them, with its own mark, like any other."""
    ifname = _ingress_ifname(task, view)
    if ifname is None:
        return []
    own = view["node"].get("ingress_addr")
    nodes = {own} | {p.get("ingress_addr") for p in view["peers"].values()}
    return [ReplyRoute(mark_for(addr), 0x10000 | mark_for(addr), addr, ifname)
            for addr in sorted(a for a in nodes if a)]


def plan_main_route(task: TaskEntry, view: NodeView,
                    egress: TaskLink | None) -> ReplyRoute | None:
    """The task's main-table default route, decided here and nowhere else.

    With an egress veth: via the node's gateway (gateway.py), so the task reaches the outside.
    Else, on the ingress network: via its own node's ingress address; a reply's first route
    lookup happens before any hook can mark it (a SYN-ACK, a UDP sendto), and without a
    default route it would fail there; the mark then re-routes it to its table. With an
    egress veth that first lookup finds the gateway route, and the mark re-routes the same.
    Else (internal networks only): none at all, so there is no way out."""
    if egress is not None:
        return ReplyRoute(0, MAIN_TABLE, gateway.ADDR, egress.ifname)
    ifname = _ingress_ifname(task, view)
    own = view["node"].get("ingress_addr")
    if ifname is not None and own:
        return ReplyRoute(0, MAIN_TABLE, own, ifname)
    return None


def plan_task_routes(task: TaskEntry, view: NodeView,
                     egress: TaskLink | None) -> list[ReplyRoute]:
    """Every default route the task's namespace holds: one per forwarding node, and main."""
    routes = plan_reply_routes(task, view)
    main = plan_main_route(task, view, egress)
    return routes + ([main] if main is not None else [])


def plan_egress_link(task: TaskEntry, view: NodeView, ip: str) -> TaskLink | None:
    """The task's veth to the node's gateway bridge, after its network veths; None if all its
    networks are internal. `ip` is its node-local address (gateway.Addresses)."""
    if not gateway.needs_egress(task, view):
        return None
    index = len(task["addrs"])
    return TaskLink(
        index=index,
        network_id="",
        vni=0,
        ifname=names.task_ifname(index),
        host_ifname=names.host_veth_name(task["id"], index),
        bridge=gateway.BRIDGE,
        mac=mac_for(ip),
        ip=ip,
        prefixlen=gateway.PREFIXLEN,
        isolated=True,
    )


def plan_task_links(task: TaskEntry, view: NodeView) -> list[TaskLink]:
    """The task's veths, eth0, eth1, ... in the order of its network ids (stable across runs)."""
    links = []
    for index, net_id in enumerate(sorted(task["addrs"])):
        net = view["networks"].get(net_id)
        if net is None:
            raise KernelError(
                f"task {task['name']} ({task['id']}): network {net_id} is not in this node's "
                "view, so it has no bridge here; sync a view that holds it first")
        att = task["addrs"][net_id]
        links.append(TaskLink(
            index=index,
            network_id=net_id,
            vni=net["vni"],
            ifname=names.task_ifname(index),
            host_ifname=names.host_veth_name(task["id"], index),
            bridge=names.bridge_name(net["vni"]),
            mac=att["mac"].lower(),
            ip=att["ip"],
            prefixlen=att["prefixlen"],
            encrypted=bool(net.get("encrypted")),
        ))
    return links
