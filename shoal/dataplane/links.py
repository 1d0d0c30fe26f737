"""A thin, typed layer over one pyroute2 IPRoute socket: reads return plain values, writes are
logged and counted, and every netlink or OS failure becomes a KernelError naming the device and
the operation."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.dataplane import names
from shoal.errors import KernelError

log = logging.getLogger("shoal.dataplane")

IFF_UP = 0x1
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_INET = 2


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    mtu: int
    up: bool
    master: int | None
    mac: str | None
    peer_index: int | None  # IFLA_LINK: for a veth, its peer's index (in the peer's namespace)
    alias: str | None
    vxlan: dict[str, Any]  # for a VXLAN device: id, local, port, learning, proxy, udp_csum
    isolated: bool = False  # a bridge port that forwards to non-isolated ports only


def _link(msg: Any) -> Link:
    vxlan: dict[str, Any] = {}
    kind = msg.get(("linkinfo", "kind"))
    if kind == "vxlan":
        for key in ("id", "local", "port", "learning", "proxy", "udp_csum"):
            vxlan[key] = msg.get(("linkinfo", "data", f"vxlan_{key}"))
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        kind=kind,
        mtu=msg.get("mtu"),
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get("master"),
        mac=(msg.get("address") or "").lower() or None,
        peer_index=msg.get("link"),
        alias=msg.get("ifalias"),
        vxlan=vxlan,
        isolated=_brport_isolated(msg),
    )


def _brport_isolated(msg: Any) -> bool:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_SLAVE_KIND") != "bridge":
        return False
    data = info.get_attr("IFLA_INFO_SLAVE_DATA")
    return bool(data is not None and data.get_attr("IFLA_BRPORT_ISOLATED"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (netlink error {exc.code})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class Netlink:
    """One netlink socket in one namespace (`where`, for messages)."""

    def __init__(self, ipr: IPRoute, where: str) -> None:
        self.ipr = ipr
        self.where = where
        self.changes = 0

    def close(self) -> None:
        self.ipr.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NetlinkError, OSError) as exc:
            raise KernelError(f"{what} in {self.where}: {_describe(exc)}") from exc

    def _write(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        log.debug("%s: %s", self.where, what)
        self.changes += 1
        return self._call(what, fn, *args, **kwargs)

    # reads

    def links(self) -> dict[str, Link]:
        return {lk.name: lk for lk in map(_link, self._call("list links", self.ipr.link, "dump"))}

    def link(self, name: str) -> Link | None:
        try:
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise KernelError(f"get link {name} in {self.where}: {_describe(exc)}") from exc
        except OSError as exc:
            raise KernelError(f"get link {name} in {self.where}: {_describe(exc)}") from exc
        return _link(msgs[0])

    def addrs(self) -> dict[int, set[tuple[str, int]]]:
        """IPv4 addresses by interface index."""
        out: dict[int, set[tuple[str, int]]] = {}
        for msg in self._call("list addresses", self.ipr.addr, "dump", family=AF_INET):
            out.setdefault(msg["index"], set()).add((msg.get("address"), msg["prefixlen"]))
        return out

    def fdb(self) -> list[tuple[int, str, str | None, int]]:
        """(ifindex, mac, dst, state) of the entries devices hold themselves (NTF_SELF), i.e.
        not those the bridge learned or holds for its ports."""
        out = []
        for msg in self._call("list fdb entries", self.ipr.fdb, "dump"):
            if msg["flags"] & NTF_SELF and msg.get("lladdr"):
                out.append((msg["ifindex"], msg.get("lladdr").lower(), msg.get("dst"),
                            msg["state"]))
        return out

    def neighbours(self) -> list[tuple[int, str, str | None, int]]:
        """(ifindex, ip, mac, state) of the IPv4 neighbour entries."""
        out = []
        for msg in self._call("list neighbours", self.ipr.neigh, "dump", family=AF_INET):
            mac = msg.get("lladdr")
            out.append((msg["ifindex"], msg.get("dst"), mac.lower() if mac else None,
                        msg["state"]))
        return out

    # writes

    def add_bridge(self, name: str, mtu: int) -> None:
        # An MTU given by the user sticks; otherwise the bridge follows its smallest port.
        self._write(f"create bridge {name}", self.ipr.link, "add", ifname=name, kind="bridge",
                    mtu=mtu, state="up")

    def add_vxlan(self, name: str, vni: int, local: str, mtu: int, master: int,
                  port: int = names.VXLAN_PORT, checksum: bool = True) -> None:
        extra = {} if checksum else {"vxlan_udp_csum": 0}
        self._write(f"create vxlan {name} (vni {vni}, local {local}, port {port})",
                    self.ipr.link, "add", **extra,
                    ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                    vxlan_port=port, vxlan_learning=0, vxlan_proxy=1, mtu=mtu,
                    master=master, state="up")

    def add_veth(self, name: str, peer: str, peer_mac: str, peer_netns_fd: int, mtu: int,
                 master: int) -> None:
        """A veth whose peer is created directly in another namespace (no move: moving a
        device flushes its addresses and takes it down)."""
        self._write(f"create veth {name} (peer {peer} {peer_mac})", self.ipr.link, "add",
                    ifname=name, kind="veth", mtu=mtu, master=master, state="up",
                    peer={"ifname": peer, "address": peer_mac, "mtu": mtu,
                          "net_ns_fd": peer_netns_fd})

    def set_isolated(self, link: Link, isolated: bool) -> None:
        self._write(f"set bridge port {link.name} isolated {'on' if isolated else 'off'}",
                    self.ipr.link, "set", index=link.index, kind="bridge_slave",
                    isolated=int(isolated))

    def set_link(self, link: Link, **attrs: Any) -> None:
        desc = " ".join(f"{k}={v}" for k, v in attrs.items())
        self._write(f"set {link.name} {desc}", self.ipr.link, "set", index=link.index, **attrs)

    def del_link(self, link: Link) -> None:
        self._write(f"delete {link.kind or 'link'} {link.name}", self.ipr.link, "del",
                    index=link.index)

    def del_link_if_present(self, name: str) -> bool:
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise KernelError(f"delete {name} in {self.where}: {_describe(exc)}") from exc
        log.debug("%s: delete %s", self.where, name)
        self.changes += 1
        return True

    def fdb_replace(self, dev: Link, mac: str, dst: str) -> None:
        self._write(f"fdb {mac} dev {dev.name} dst {dst} self permanent", self.ipr.fdb,
                    "replace", ifindex=dev.index, lladdr=mac, dst=dst,
                    state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def fdb_del(self, dev: Link, mac: str, dst: str | None) -> None:
        kwargs = {"dst": dst} if dst else {}
        self._write(f"delete fdb {mac} dev {dev.name} dst {dst}", self.ipr.fdb, "del",
                    ifindex=dev.index, lladdr=mac, **kwargs)

    def neigh_replace(self, dev: Link, ip: str, mac: str) -> None:
        self._write(f"neigh {ip} lladdr {mac} dev {dev.name} nud permanent", self.ipr.neigh,
                    "replace", ifindex=dev.index, dst=ip, lladdr=mac, state=NUD_PERMANENT)

    def neigh_del(self, dev: Link, ip: str) -> None:
        self._write(f"delete neigh {ip} dev {dev.name}", self.ipr.neigh, "del",
                    ifindex=dev.index, dst=ip)

    def addr_add(self, dev: Link, ip: str, prefixlen: int) -> None:
        self._write(f"add address {ip}/{prefixlen} to {dev.name}", self.ipr.addr, "add",
                    index=dev.index, address=ip, prefixlen=prefixlen)

    def addr_del(self, dev: Link, ip: str, prefixlen: int) -> None:
        self._write(f"delete address {ip}/{prefixlen} from {dev.name}", self.ipr.addr, "del",
                    index=dev.index, address=ip, prefixlen=prefixlen)

    # policy routing (the ingress reply path inside task namespaces)

    def fwmark_rules(self) -> dict[int, tuple[int, int]]:
        """mark -> (table, priority) of the IPv4 fwmark rules."""
        out = {}
        for msg in self._call("list rules", self.ipr.get_rules, family=AF_INET):
            mark = msg.get_attr("FRA_FWMARK")
            if mark is not None:
                table = msg.get_attr("FRA_TABLE") or msg["table"]
                out[mark] = (table, msg.get_attr("FRA_PRIORITY") or 0)
        return out

    def rule_add(self, mark: int, table: int, priority: int) -> None:
        self._write(f"rule fwmark {mark:#x} lookup {table}", self.ipr.rule, "add",
                    family=AF_INET, fwmark=mark, fwmask=0xFFFFFFFF, table=table,
                    priority=priority)

    def rule_del(self, mark: int, table: int, priority: int) -> None:
        self._write(f"delete rule fwmark {mark:#x}", self.ipr.rule, "del", family=AF_INET,
                    fwmark=mark, fwmask=0xFFFFFFFF, table=table, priority=priority)

    def default_routes(self) -> dict[int, tuple[str | None, int | None]]:
        """table -> (gateway, oif) of the IPv4 default routes (main included, not local)."""
        out = {}
        # No table argument: pyroute2 0.9 takes table=0 as a filter that matches nothing.
        for msg in self._call("list routes", self.ipr.route, "dump", family=AF_INET):
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if msg["dst_len"] == 0 and table not in (253, 255):
                out[table] = (msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"))
        return out

    def default_route_replace(self, table: int, gateway: str, dev: Link) -> None:
        self._write(f"route default via {gateway} dev {dev.name} table {table}", self.ipr.route,
                    "replace", dst="0.0.0.0/0", gateway=gateway, oif=dev.index, table=table)

    def default_route_del(self, table: int) -> None:
        self._write(f"delete default route table {table}", self.ipr.route, "del",
                    dst="0.0.0.0/0", table=table)
