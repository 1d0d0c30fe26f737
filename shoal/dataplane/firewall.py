"""The node's own filter: what may enter the node and its tasks, what is forwarded, and the
masquerade of task egress. In the node's namespace, next to ingress.py's DNAT table:

    table inet shoal_filter
      set peers        the cluster's node addresses (the view's peers and the manager)
      set published    every published port, proto . port
      chain input      filter input:   from the WireGuard interface -> from_tunnel; cleartext
                       VXLAN of encrypted networks (their port, or their VNIs on the plain
                       port) from anywhere else: dropped; from the underlay -> from_outside;
                       from tasks -> from_tasks
      chain from_tunnel    decrypted traffic: the encrypted networks' VXLAN, ICMP errors. Drop.
      chain from_outside   established, ICMP errors, published ports, the HTTP mesh ports;
                       from peers only: VXLAN, WireGuard, the control plane (on the manager's
                       node). Drop.
      chain from_tasks     established, ICMP errors, published ports, the HTTP mesh ports. Drop.
                       (a task may not call the node's control plane nor inject VXLAN into it)
      chain forward    filter forward: established; DNATed by ingress.py (published ports);
                       within one overlay bridge (bridged traffic, seen here when br_netfilter
                       is loaded); gateway -> underlay via `egress`. Anything else from or to
                       a shoal interface is dropped: no route joins two networks on the node.
      chain output     encrypted networks' VXLAN (udp/4790) leaves only into the WireGuard
                       interface: if wireguard-go is gone, its route is too, and on a host
                       with a default route the packets would otherwise leave in cleartext.
      chain egress     task egress may not reach a peer's VXLAN or control port: masqueraded
                       to this node's address it would pass there as a cluster peer.
      chain postrouting  nat: gateway addresses masqueraded wherever they leave the bridge.

    table bridge shoal_filter
      chain forward, output   on the ingress network, no task talks to another task: every
                       legitimate packet there has a node's ingress address or an outside
                       client's on one end. Without it, two services published from different
                       networks would meet on the ingress network that publishing put them on.

Why drops and not a policy: the base chains keep `policy accept` and drop only traffic that
touches the underlay or shoal's own interfaces, so other software's forwarding on a real host
(docker0, libvirt) is left alone. Why a whole rewrite per change: the table is small and a
change is rare (a peer, a published port); conntrack keeps the connections that were allowed.

`render` is pure (view -> Policy), `script` is pure (Policy -> nft text), `Firewall` applies it
through a libnftables context in the node's namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute

from shoal.dataplane import gateway, names
from shoal.dataplane.nft import Nft
from shoal.errors import InvalidArgument, KernelError
from shoal.model.view import NodeView

TABLE = "inet shoal_filter"
BRIDGE_TABLE = "bridge shoal_filter"
ICMP_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"  # PMTU: type 3 code 4
ICMPV6_NEEDED = ("destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
                 "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert")


@dataclass(frozen=True)
class Policy:
    """What the node lets in and through, rendered from the view (see the module docstring)."""

    underlay: str  # the interface holding the node's underlay address
    peers: tuple[str, ...]  # cluster node addresses, sorted
    published: tuple[tuple[str, int], ...]  # (proto, port), sorted
    mesh_ports: tuple[int, ...]  # the HTTP routing mesh's ports on this node
    control_port: int | None  # the manager's port if it runs on this node, else None
    control_from: tuple[str, ...] | None  # who else may reach it (joining nodes); None: anyone
    manager_port: int | None  # the manager's port, whichever node: kept from task egress
    bridges: tuple[str, ...]  # overlay bridges on this node
    ingress_subnet: str | None
    node_ingress: tuple[str, ...]  # every node's ingress address, sorted
    closed: bool = False  # drop everything else arriving on the underlay (dedicated nodes)
    wireguard: tuple[str, int] | None = None  # (interface, port) while the node can encrypt
    encrypted_vnis: tuple[int, ...] = ()  # VNIs of the encrypted networks in the view


def split_hostport(addr: str) -> tuple[str, int] | None:
    host, _, port = addr.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def parse_sources(items: list[str]) -> tuple[str, ...]:
    """`--control-from` values (ADDR, CIDR or FIRST-LAST; comma-separated too), checked here so
    that nft never sees a bad one."""
    out = []
    for item in (i.strip() for arg in items for i in arg.split(",")):
        if not item:
            continue
        try:
            if "-" in item:
                first, last = (ipaddress.IPv4Address(a.strip()) for a in item.split("-", 1))
                if last < first:
                    raise ValueError("the range ends before it starts")
                out.append(f"{first}-{last}")
            else:
                out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError as exc:
            raise InvalidArgument(f"invalid --control-from {item!r}: {exc}") from exc
    return tuple(out)


def render(view: NodeView, underlay: str, manager: str | None, mesh_ports: tuple[int, ...],
           control_from: tuple[str, ...] | None = None, closed: bool = False,
           wireguard: tuple[str, int] | None = None) -> Policy:
    """The node's policy. `manager` is the agent's ADDR:PORT for it; `control_from` the
    addresses (CIDR, range) of nodes that may still join, beyond the known peers."""
    node_addr = view["node"]["addr"]
    peers = {p["addr"] for p in view["peers"].values() if p.get("addr")}
    mgr = split_hostport(manager) if manager else None
    if mgr is not None:
        peers.add(mgr[0])
    published = {(p["Protocol"], int(p["PublishedPort"])) for svc in view["services"].values()
                 for p in svc["ports"] if p.get("PublishedPort")}
    ingress = next((n for n in view["networks"].values() if n.get("ingress")), None)
    node_ingress = {p.get("ingress_addr") for p in view["peers"].values()}
    node_ingress.add(view["node"].get("ingress_addr"))
    return Policy(
        underlay=underlay,
        peers=tuple(sorted(peers, key=ipaddress.IPv4Address)),
        published=tuple(sorted(published)),
        mesh_ports=tuple(sorted({p for p in mesh_ports if p})),
        control_port=mgr[1] if mgr is not None and mgr[0] == node_addr else None,
        control_from=tuple(control_from) if control_from is not None else None,
        manager_port=mgr[1] if mgr is not None else None,
        bridges=tuple(names.bridge_name(n["vni"]) for n in
                      sorted(view["networks"].values(), key=lambda n: n["vni"])),
        ingress_subnet=ingress["subnet"] if ingress else None,
        node_ingress=tuple(sorted((a for a in node_ingress if a), key=ipaddress.IPv4Address)),
        closed=closed,
        wireguard=wireguard,
        encrypted_vnis=tuple(sorted(n["vni"] for n in view["networks"].values()
                                    if n.get("encrypted"))),
    )


def _set(name: str, kind: str, elements: list[str], flags: str = "") -> list[str]:
    out = [f"  set {name} {{", f"    type {kind}", *([f"    flags {flags}"] if flags else [])]
    if elements:
        out.append(f"    elements = {{ {', '.join(elements)} }}")
    return [*out, "  }"]


def _chain(name: str, rules: list[str], hook: str = "") -> list[str]:
    return [f"  chain {name} {{", *([f"    {hook}"] if hook else []),
            *(f"    {r}" for r in rules), "  }"]


def _open_ports(p: Policy) -> list[str]:
    """What anyone may reach on the node, outsiders and tasks alike."""
    rules = ["ct state established,related accept", f"icmp type {{ {ICMP_ERRORS} }} accept",
             f"icmpv6 type {{ {ICMPV6_NEEDED} }} accept"]
    if p.published:
        # A port with no healthy task is not DNATed: the node's stack refuses it at once.
        rules.append("meta l4proto . th dport @published accept")
    if p.mesh_ports:
        rules.append(f"tcp dport {{ {', '.join(map(str, p.mesh_ports))} }} accept")
    return rules


def _rest_of_outside(p: Policy) -> list[str]:
    """On a dedicated node (the lab's) nothing else gets in. On a shared host shoal closes only
    its own ports to outsiders and leaves the host's other services (ssh) to their owner:
    a node agent that locked its admin out would not be failing safely."""
    if p.closed:
        return ["counter drop"]
    rules = [f"udp dport {names.VXLAN_PORT} counter drop"]
    if p.wireguard is not None:
        rules.append(f"udp dport {p.wireguard[1]} counter drop")
    if p.control_port is not None:
        rules.append(f"tcp dport {p.control_port} counter drop")
    return rules


def _cleartext_guard(p: Policy) -> list[str]:
    """Encrypted networks' VXLAN is only ever taken from the WireGuard interface. The kernel's
    VXLAN socket takes a packet from any source on any interface, so without these rules a
    cleartext packet sent to port 4790 (even by a peer) would be delivered. Their VNIs on the
    plain port reach no device (a VNI is looked up per port), and are dropped here too, so
    that this does not rest on a kernel detail. Always present: even a node that cannot
    encrypt refuses cleartext for those VNIs."""
    rules = []
    if p.wireguard is not None:
        rules.append(f'iifname "{p.wireguard[0]}" goto from_tunnel')
    rules.append(f"udp dport {names.ENCRYPTED_VXLAN_PORT} counter drop")
    if p.encrypted_vnis:
        vnis = ", ".join(map(str, p.encrypted_vnis))
        # The VNI: bytes 4-6 of the VXLAN header, which follows the 8-byte UDP header.
        rules.append(f"udp dport {names.VXLAN_PORT} @th,96,24 {{ {vnis} }} counter drop")
    return rules


def _tunnel_only(p: Policy) -> str:
    """Fail closed on the way out as well: encrypted VXLAN never leaves in the clear."""
    if p.wireguard is None:
        return f"udp dport {names.ENCRYPTED_VXLAN_PORT} counter drop"
    return f'udp dport {names.ENCRYPTED_VXLAN_PORT} oifname != "{p.wireguard[0]}" counter drop'


def script(p: Policy) -> str:
    """The whole of both tables, replacing what was there, as one transaction."""
    gw, up = gateway.BRIDGE, p.underlay
    outside = _open_ports(p) + [f"ip saddr @peers udp dport {names.VXLAN_PORT} accept"]
    if p.wireguard is not None:
        outside.append(f"ip saddr @peers udp dport {p.wireguard[1]} accept")
    if p.control_port is not None:
        outside.append(f"ip saddr @peers tcp dport {p.control_port} accept")
        if p.control_from is None:
            outside.append(f"tcp dport {p.control_port} accept")
        elif p.control_from:
            outside.append(f"ip saddr {{ {', '.join(p.control_from)} }} "
                           f"tcp dport {p.control_port} accept")
    forward = ["ct state established,related accept", "ct status dnat accept"]
    if p.bridges:
        same = ", ".join(f'"{b}" . "{b}"' for b in p.bridges)
        forward.append(f"iifname . oifname {{ {same} }} accept")
    forward += [f'iifname "{gw}" oifname "{up}" goto egress', f'iifname "{gw}" drop',
                f'iifname "{names.BRIDGE_PREFIX}*" drop', f'oifname "{gw}" drop',
                f'oifname "{names.BRIDGE_PREFIX}*" drop']
    egress = [f"ip daddr @peers udp dport {{ {names.VXLAN_PORT}, "
              f"{names.ENCRYPTED_VXLAN_PORT} }} drop"]
    if p.wireguard is not None:
        egress.append(f"ip daddr @peers udp dport {p.wireguard[1]} drop")
    if p.manager_port is not None:
        egress.append(f"ip daddr @peers tcp dport {p.manager_port} drop")
    lines = [
        f"table {TABLE} {{}}", f"delete table {TABLE}", f"table {TABLE} {{",
        *_set("peers", "ipv4_addr", list(p.peers)),
        *_set("published", "inet_proto . inet_service",
              [f"{proto} . {port}" for proto, port in p.published]),
        *_chain("input", [*_cleartext_guard(p), f'iifname "{up}" goto from_outside',
                          f'iifname "{gw}" goto from_tasks',
                          f'iifname "{names.BRIDGE_PREFIX}*" goto from_tasks'],
                "type filter hook input priority filter; policy accept;"),
        *(_chain("from_tunnel", [f"udp dport {names.ENCRYPTED_VXLAN_PORT} accept",
                                 "ct state established,related accept",
                                 f"icmp type {{ {ICMP_ERRORS} }} accept", "counter drop"])
          if p.wireguard is not None else []),
        *_chain("from_outside", [*outside, *_rest_of_outside(p)]),
        *_chain("from_tasks", [*_open_ports(p), "counter drop"]),
        *_chain("forward", forward, "type filter hook forward priority filter; policy accept;"),
        *_chain("output", [_tunnel_only(p)],
                "type filter hook output priority filter; policy accept;"),
        *_chain("egress", [*egress, "accept"]),
        *_chain("postrouting", [f'ip saddr {gateway.NETWORK} oifname != "{gw}" masquerade'],
                "type nat hook postrouting priority srcnat; policy accept;"),
        "}",
        f"table {BRIDGE_TABLE} {{}}", f"delete table {BRIDGE_TABLE}",
    ]
    if p.ingress_subnet:
        # Matched by address, not by bridge (kernels without nft_meta_bridge have no
        # ibrname): only the ingress bridge carries addresses of the ingress subnet.
        task_to_task = (f"ip saddr {p.ingress_subnet} ip daddr {p.ingress_subnet} "
                        "ip saddr != @nodes ip daddr != @nodes drop")
        lines += [
            f"table {BRIDGE_TABLE} {{",
            *_set("nodes", "ipv4_addr", list(p.node_ingress)),
            *_chain("forward", [task_to_task],
                    "type filter hook forward priority filter; policy accept;"),
            *_chain("output", [task_to_task],
                    "type filter hook output priority filter; policy accept;"),
            "}",
        ]
    return "\n".join(lines) + "\n"


def underlay_ifname(addr: str) -> str:
    """The name of the interface that holds the node's underlay address (in this namespace)."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=2, address=addr):
            links = ipr.get_links(msg["index"])
            if links:
                return str(links[0].get_attr("IFLA_IFNAME"))
    raise KernelError(f"no interface holds the node address {addr}: the node filter cannot "
                      "tell the underlay from the rest")


class Firewall:
    """Keeps the node's filter matching the view."""

    def __init__(self, addr: str, manager: str | None, mesh_ports: tuple[int, ...]) -> None:
        self.addr = addr
        self.manager = manager
        self.mesh_ports = mesh_ports
        self.control_from: tuple[str, ...] | None = None  # None: any node may join
        self.closed = False  # see Policy.closed
        self.wireguard: tuple[str, int] | None = None  # (interface, port): set by the agent
        self._underlay: str | None = None
        self._nft: Nft | None = None
        self._programmed: Policy | None = None

    def sync(self, view: NodeView, force: bool = False) -> bool:
        """Program the policy if it changed; `force` rewrites it anyway (repairs drift: a table
        deleted by hand would otherwise leave the node open until the next change)."""
        if self._underlay is None or force:
            self._underlay = underlay_ifname(self.addr)
        wanted = render(view, self._underlay, self.manager, self.mesh_ports, self.control_from,
                        self.closed, self.wireguard)
        if wanted == self._programmed and not force:
            return False
        if self._nft is None:
            self._nft = Nft()
        self._programmed = None
        self._nft.run(script(wanted))
        self._programmed = wanted
        return True

    def close(self) -> None:
        """Remove both tables and let go of the context."""
        if self._nft is not None:
            self._nft.run(f"table {TABLE} {{}}\ndelete table {TABLE}\n"
                          f"table {BRIDGE_TABLE} {{}}\ndelete table {BRIDGE_TABLE}\n")
            self._nft.close()
            self._nft = None
            self._programmed = None
