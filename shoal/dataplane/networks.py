"""Overlay networks on this node: per network a bridge and a VXLAN device (a port of it), and
the VXLAN device's static FDB and neighbour entries. Learning is off and there is no all-zeros
FDB entry, so the VXLAN device floods nothing: unknown MACs are dropped, and ARP requests for
remote tasks are answered locally by the device's proxy from the neighbour table.

Also the node's egress gateway bridge (gateway.py), while a local task needs it."""

from __future__ import annotations

from shoal.dataplane import gateway, names
from shoal.dataplane.links import NUD_PERMANENT, Link, Netlink
from shoal.dataplane.plan import (
    Vxlan,
    fdb_by_vni,
    neigh_by_vni,
    plan_fdb,
    plan_node_addrs,
    plan_vxlan,
)
from shoal.errors import KernelError
from shoal.model.view import NodeView


def _ours(links: dict[str, Link], prefix: str, kind: str) -> dict[int, Link]:
    out = {}
    for link in links.values():
        vni = names.vni_of(link.name, prefix)
        if vni is not None and link.kind == kind:
            out[vni] = link
    return out


def sync_networks(nl: Netlink, view: NodeView, node_id: str, local_addr: str, mtu: int,
                  tunnel_addr: str | None = None) -> None:
    """`tunnel_addr`: this node's WireGuard tunnel address, None when it cannot encrypt (its
    encrypted networks are then not built: see plan.plan_vxlan)."""
    wanted = plan_vxlan(view, local_addr, tunnel_addr, mtu)
    links = nl.links()
    bridges = _ours(links, names.BRIDGE_PREFIX, "bridge")
    vxlans = _ours(links, names.VXLAN_PREFIX, "vxlan")

    # Networks that went away first: a VNI can then move to a new device without EEXIST.
    for vni, link in vxlans.items():
        if vni not in wanted:
            nl.del_link(link)
    for vni, link in bridges.items():
        if vni not in wanted:
            nl.del_link(link)

    devices: dict[int, Link] = {}
    node_addrs = plan_node_addrs(view)
    have_addrs = nl.addrs()
    for vni in sorted(wanted):
        bridge = _ensure_bridge(nl, links, vni, wanted[vni].mtu)
        devices[vni] = _ensure_vxlan(nl, links, vni, wanted[vni], bridge)
        _ensure_node_addr(nl, bridge, node_addrs.get(vni), have_addrs.get(bridge.index, set()))

    entries = plan_fdb(view, node_id)
    _sync_fdb(nl, devices, fdb_by_vni(entries))
    _sync_neighbours(nl, devices, neigh_by_vni(entries))


def _ensure_bridge(nl: Netlink, links: dict[str, Link], vni: int, mtu: int) -> Link:
    name = names.bridge_name(vni)
    link = links.get(name)
    if link is not None and link.kind != "bridge":
        nl.del_link(link)
        link = None
    if link is None:
        nl.add_bridge(name, mtu)
        return _must(nl, name)
    if link.mtu != mtu or not link.up:
        nl.set_link(link, mtu=mtu, state="up")
    return link


def _ensure_vxlan(nl: Netlink, links: dict[str, Link], vni: int, spec: Vxlan,
                  bridge: Link) -> Link:
    name = names.vxlan_name(vni)
    link = links.get(name)
    local, mtu = spec.local, spec.mtu
    want = {"id": vni, "local": local, "port": spec.port, "learning": 0, "proxy": 1}
    if not spec.checksum:
        want["udp_csum"] = 0  # only then: plain networks keep the kernel's default
    if link is not None and (link.kind != "vxlan"
                             or {k: link.vxlan.get(k) for k in want} != want):
        nl.del_link(link)  # VXLAN parameters cannot be changed in place
        link = None
    if link is None:
        nl.add_vxlan(name, vni, local, mtu, bridge.index, spec.port, spec.checksum)
        return _must(nl, name)
    if link.master != bridge.index or link.mtu != mtu or not link.up:
        nl.set_link(link, master=bridge.index, mtu=mtu, state="up")
    return link


def _ensure_node_addr(nl: Netlink, bridge: Link, wanted: tuple[str, int, str] | None,
                      have: set[tuple[str, int]]) -> None:
    """The node's own address on a network's bridge (ingress only), with the MAC its peers
    were told; any other address there goes."""
    for ip, prefixlen in have:
        if wanted is None or (ip, prefixlen) != wanted[:2]:
            nl.addr_del(bridge, ip, prefixlen)
    if wanted is None:
        return
    ip, prefixlen, mac = wanted
    if bridge.mac != mac:
        nl.set_link(bridge, address=mac)
    if (ip, prefixlen) not in have:
        nl.addr_add(bridge, ip, prefixlen)


def _must(nl: Netlink, name: str) -> Link:
    link = nl.link(name)
    if link is None:
        raise KernelError(f"{name} vanished right after it was created in {nl.where}")
    return link


def _sync_fdb(nl: Netlink, devices: dict[int, Link], wanted: dict[int, dict[str, str]]) -> None:
    by_index = {dev.index: vni for vni, dev in devices.items()}
    have: dict[int, dict[str, tuple[str | None, int]]] = {vni: {} for vni in devices}
    for ifindex, mac, dst, state in nl.fdb():
        vni = by_index.get(ifindex)
        if vni is None:
            continue
        want_dst = wanted.get(vni, {}).get(mac)
        if mac in have[vni] or want_dst is None or dst != want_dst:
            nl.fdb_del(devices[vni], mac, dst)  # stale, or a second remote for one MAC
            continue
        have[vni][mac] = (dst, state)
    for vni, macs in wanted.items():
        dev = devices.get(vni)
        if dev is None:
            continue
        for mac, dst in macs.items():
            cur = have[vni].get(mac)
            if cur is None or not cur[1] & NUD_PERMANENT:
                nl.fdb_replace(dev, mac, dst)


def _sync_neighbours(nl: Netlink, devices: dict[int, Link],
                     wanted: dict[int, dict[str, str]]) -> None:
    by_index = {dev.index: vni for vni, dev in devices.items()}
    have: dict[int, dict[str, tuple[str | None, int]]] = {vni: {} for vni in devices}
    for ifindex, ip, mac, state in nl.neighbours():
        vni = by_index.get(ifindex)
        if vni is None:
            continue
        if ip not in wanted.get(vni, {}):
            nl.neigh_del(devices[vni], ip)
            continue
        have[vni][ip] = (mac, state)
    for vni, ips in wanted.items():
        dev = devices.get(vni)
        if dev is None:
            continue
        for ip, mac in ips.items():
            cur = have[vni].get(ip)
            if cur is None or cur[0] != mac or not cur[1] & NUD_PERMANENT:
                nl.neigh_replace(dev, ip, mac)


def sync_gateway(nl: Netlink, wanted: bool, mtu: int) -> None:
    """The gateway bridge with the node's gateway address, or no bridge. Its MTU is the
    underlay's: egress traffic is routed out of the node, never through VXLAN."""
    link = nl.link(gateway.BRIDGE)
    if link is not None and (link.kind != "bridge" or not wanted):
        nl.del_link(link)
        link = None
    if not wanted:
        return
    if link is None:
        nl.add_bridge(gateway.BRIDGE, mtu)
        link = _must(nl, gateway.BRIDGE)
    elif link.mtu != mtu or not link.up:
        nl.set_link(link, mtu=mtu, state="up")
    have = nl.addrs().get(link.index, set())
    for ip, prefixlen in sorted(have - {(gateway.ADDR, gateway.PREFIXLEN)}):
        nl.addr_del(link, ip, prefixlen)
    if (gateway.ADDR, gateway.PREFIXLEN) not in have:
        nl.addr_add(link, gateway.ADDR, gateway.PREFIXLEN)


def remove_vxlans(nl: Netlink, port: int) -> None:
    """The VXLAN devices on UDP port `port` (the encrypted networks': ENCRYPTED_VXLAN_PORT)."""
    for link in _ours(nl.links(), names.VXLAN_PREFIX, "vxlan").values():
        if link.vxlan.get("port") == port:
            nl.del_link(link)


def remove_all(nl: Netlink) -> None:
    """Every shoal bridge and VXLAN device in this namespace, the gateway bridge too."""
    nl.del_link_if_present(gateway.BRIDGE)
    links = nl.links()
    for link in _ours(links, names.VXLAN_PREFIX, "vxlan").values():
        nl.del_link(link)
    for link in _ours(links, names.BRIDGE_PREFIX, "bridge").values():
        nl.del_link(link)
