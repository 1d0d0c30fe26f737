"""Task namespaces: one named network namespace per task, one veth pair per network attachment.

The node side of each veth (shv<task id[:8]><index>) is a port of the network's bridge; the task
side (eth<index>) is created directly inside the task namespace with the task's MAC, then given
its address. `lo` is brought up and its alias names the owning node, so that agents of a lab that
share one /run/netns (and one name prefix) only ever list or remove their own namespaces.

A task that may go out (gateway.py) has one more veth after its networks', to the node's
gateway bridge. Its default routes (the main table's and the ingress reply tables) are planned
in one place, plan.plan_task_routes, and written here in one place, _sync_routes.
"""

from __future__ import annotations

import os

from pyroute2 import IPRoute

from shoal.dataplane import gateway, names, namespaces
from shoal.dataplane.links import Link, Netlink
from shoal.dataplane.plan import (
    REPLY_RULE_PRIORITY,
    ReplyRoute,
    TaskLink,
    plan_egress_link,
    plan_task_links,
    plan_task_routes,
)
from shoal.errors import KernelError
from shoal.model.view import NodeView, TaskEntry

LO_INDEX = 1  # lo is always index 1 in a network namespace


def open_task_netlink(fd: int, netns: str) -> Netlink:
    try:
        sock = namespaces.netlink_socket(fd)
        return Netlink(IPRoute(use_socket=sock), f"namespace {netns}")
    except OSError as exc:
        raise namespaces.kernel_error(f"open a netlink socket in namespace {netns}", exc) from exc


def attach(node: Netlink, task: TaskEntry, view: NodeView, netns: str, node_id: str,
           mtu: int, addrs: gateway.Addresses) -> int:
    """Create or repair the task's namespace and veths; return the number of kernel changes."""
    plan = plan_task_links(task, view)
    bridges: dict[str, Link] = {}
    for tl in plan:
        bridge = node.link(tl.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(
                f"task {task['name']} ({task['id']}): bridge {tl.bridge} of network "
                f"{tl.network_id} does not exist in {node.where}; sync the view first")
        bridges[tl.bridge] = bridge
    if gateway.needs_egress(task, view):
        bridge = node.link(gateway.BRIDGE)
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(
                f"task {task['name']} ({task['id']}): the gateway bridge {gateway.BRIDGE} does "
                f"not exist in {node.where}; sync the view first")
        bridges[gateway.BRIDGE] = bridge
    try:
        fd = namespaces.create(netns)
    except OSError as exc:
        raise namespaces.kernel_error(f"create namespace {netns}", exc) from exc
    try:
        inner = open_task_netlink(fd, netns)
        try:
            egress = None
            if gateway.BRIDGE in bridges:
                found = _addr_of(inner, names.task_ifname(len(plan)))
                egress = plan_egress_link(task, view, addrs.claim(task["id"], found))
            _sync_task(node, inner, fd, plan + ([egress] if egress else []), bridges, node_id,
                       mtu)
            _sync_routes(inner, plan_task_routes(task, view, egress))
            return inner.changes
        finally:
            inner.close()
    finally:
        os.close(fd)


def _addr_of(inner: Netlink, ifname: str) -> str | None:
    """The address an interface of the task already has (the gateway veth after a restart)."""
    link = inner.link(ifname)
    if link is None:
        return None
    return next(iter(sorted(inner.addrs().get(link.index, set()))), (None, 0))[0]


def _sync_routes(inner: Netlink, routes: list[ReplyRoute]) -> None:
    """Every default route of the task: one fwmark rule and one table per node that may
    forward to it, and the main table's (gateway or ingress), or none."""
    rules = inner.fwmark_rules()
    tables = inner.default_routes()
    wanted = {r.mark: r for r in routes}
    for mark, (table, priority) in rules.items():
        if mark not in wanted or wanted[mark].table != table:
            inner.rule_del(mark, table, priority)
    for table in tables:
        if table not in {r.table for r in routes}:
            inner.default_route_del(table)
    for r in routes:
        if r.mark and rules.get(r.mark) != (r.table, REPLY_RULE_PRIORITY):
            inner.rule_add(r.mark, r.table, REPLY_RULE_PRIORITY)
        dev = inner.link(r.ifname)
        if dev is None:
            raise KernelError(f"{r.ifname} is missing in {inner.where}")
        if tables.get(r.table) != (r.gateway, dev.index):
            inner.default_route_replace(r.table, r.gateway, dev)


def _mtu(tl: TaskLink, overlay_mtu: int) -> int:
    """Overlay veths lose 50 bytes to VXLAN, and on an encrypted network 80 more to
    WireGuard; the gateway veth is routed out of the underlay."""
    if tl.bridge == gateway.BRIDGE:
        return overlay_mtu + gateway.VXLAN_OVERHEAD
    return overlay_mtu - names.WIREGUARD_OVERHEAD if tl.encrypted else overlay_mtu


def _sync_task(node: Netlink, inner: Netlink, fd: int, plan: list[TaskLink],
               bridges: dict[str, Link], node_id: str, overlay_mtu: int) -> None:
    links = inner.links()
    by_index = {lk.index: lk for lk in links.values()}
    lo = by_index.get(LO_INDEX)
    alias = names.owner_alias(node_id)
    if lo is not None and (not lo.up or lo.alias != alias):
        inner.set_link(lo, state="up", ifalias=alias)

    wanted = {tl.ifname for tl in plan}
    for link in links.values():
        # eth<n> of an attachment the task no longer has (its veth pair goes with it)
        if link.name.startswith(names.TASK_IFNAME) and link.name not in wanted:
            inner.del_link(link)

    addrs = inner.addrs()
    for tl in plan:
        bridge = bridges[tl.bridge]
        mtu = _mtu(tl, overlay_mtu)
        host = node.link(tl.host_ifname)
        peer = links.get(tl.ifname)
        paired = (
            host is not None and peer is not None and host.kind == "veth"
            and peer.kind == "veth" and host.peer_index == peer.index
            and peer.peer_index == host.index and peer.mac == tl.mac
        )
        if not paired:
            # Half a pair, a foreign device or a wrong MAC: start this attachment over.
            if host is not None:
                node.del_link(host)
            if peer is not None and inner.link(tl.ifname) is not None:
                inner.del_link(peer)
            node.add_veth(tl.host_ifname, tl.ifname, tl.mac, fd, mtu, bridge.index)
            peer = inner.link(tl.ifname)
            host = node.link(tl.host_ifname)
            if peer is None or host is None:
                raise KernelError(f"{tl.ifname} did not appear in {inner.where} after "
                                  f"creating veth {tl.host_ifname}")
            have: set[tuple[str, int]] = set()
        else:
            assert host is not None and peer is not None
            if host.master != bridge.index or host.mtu != mtu or not host.up:
                node.set_link(host, master=bridge.index, mtu=mtu, state="up")
            have = addrs.get(peer.index, set())
        if host.isolated != tl.isolated:
            node.set_isolated(host, tl.isolated)
        if peer.mtu != mtu or not peer.up:
            inner.set_link(peer, mtu=mtu, state="up")
        for ip, prefixlen in sorted(have - {(tl.ip, tl.prefixlen)}):
            inner.addr_del(peer, ip, prefixlen)
        if (tl.ip, tl.prefixlen) not in have:
            inner.addr_add(peer, tl.ip, tl.prefixlen)


def detach(node: Netlink, task_id: str, netns: str) -> None:
    """Delete the task's veths (at once: a namespace's devices are destroyed asynchronously once
    it is unpinned, which would race a quick re-attach), then unpin its namespace."""
    index = 0
    while node.del_link_if_present(names.host_veth_name(task_id, index)):
        index += 1
    try:
        namespaces.remove(netns)
    except OSError as exc:
        raise namespaces.kernel_error(f"remove namespace {netns}", exc) from exc


def owner(netns: str) -> str | None:
    """The node id in lo's alias inside the namespace; None if stale or not marked."""
    fd = namespaces.open_fd(netns)
    if fd is None:
        return None
    try:
        inner = open_task_netlink(fd, netns)
    finally:
        os.close(fd)
    try:
        lo = inner.links()
    finally:
        inner.close()
    for link in lo.values():
        if link.index == LO_INDEX and link.alias and link.alias.startswith(names.OWNER_PREFIX):
            return link.alias[len(names.OWNER_PREFIX):]
    return None
