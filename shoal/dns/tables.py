"""The resolver's tables: the node's NodeView, rendered per network, and who may ask what.

A change (a full view or a delta) re-renders only the networks it touches; the scopes of those
networks lose their built answers, and the askers (task -> scope, upstreams) are worked out
again on their next query. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shoal.dns.records import NetworkNames, Ttls, network_names
from shoal.dns.scope import Scope
from shoal.model import view as nv

DNS_PORT = 53
MAX_UPSTREAMS = 3  # as glibc's MAXNS: more would only multiply the wait for a dead name

Upstream = tuple[str, int]


def parse_upstream(text: str) -> Upstream | None:
    """'198.18.0.2', '198.18.0.2:5353', '2001:db8::1' or '[2001:db8::1]:53' -> (ip, port).
    None for loopback addresses (they would mean the resolver itself, or nothing) and junk."""
    text = text.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified or not 0 < port < 65536:
        return None
    return str(ip), port


def parse_upstreams(items: Iterable[str]) -> tuple[Upstream, ...]:
    out: list[Upstream] = []
    for item in items:
        up = parse_upstream(item)
        if up is not None and up not in out:
            out.append(up)
    return tuple(out[:MAX_UPSTREAMS])


@dataclass(frozen=True, slots=True)
class Asker:
    """A task that asks: the names it may see and where its other queries go."""

    task_id: str
    scope: Scope
    upstreams: tuple[Upstream, ...]
    may_forward: bool  # False when every network of the task is --internal


NOBODY = Asker("", Scope(()), (), False)


class Tables:
    def __init__(self, ttls: Ttls, upstreams: tuple[Upstream, ...] = ()) -> None:
        self.ttls = ttls
        self.upstreams = upstreams  # the node's: --dns-upstream, else its resolv.conf
        self.view: nv.NodeView | None = None
        self.nets: dict[str, NetworkNames] = {}
        self.scopes: dict[frozenset[str], Scope] = {}
        self.askers: dict[str, Asker] = {}

    # --- changes ---

    def set_view(self, view: nv.NodeView) -> None:
        if self.view is not None:
            # A snapshot after a reconnect is mostly what we have: apply only the difference,
            # so a manager restart does not re-render (and stall on) every name.
            delta = nv.diff(self.view, view)
            if delta is None:
                self.view = view
            else:
                self.apply_delta(delta)
            return
        self.view = view
        self.nets = {n: network_names(view, n, self.ttls) for n, net in view["networks"].items()
                     if not net.get("ingress")}
        self.scopes.clear()
        self.askers.clear()

    def apply_delta(self, delta: dict[str, Any]) -> set[str]:
        """Apply a delta; return the ids of the networks whose names changed."""
        if self.view is None:
            return set()
        rebuild, endpoints, services = _changes(self.view, delta)
        self.view = new = nv.apply_delta(self.view, delta)
        touched = set(rebuild)
        for net_id in rebuild:  # a network came, went or changed its name: render it anew
            net = new["networks"].get(net_id)
            if net is not None and not net.get("ingress"):
                self.nets[net_id] = network_names(new, net_id, self.ttls)
            else:
                self.nets.pop(net_id, None)
        for net_id in (endpoints.keys() | services.keys()) - rebuild:
            names = self.nets.get(net_id)
            if names is not None and names.update(new, endpoints.get(net_id, set()),
                                                  services.get(net_id, set()), self.ttls):
                touched.add(net_id)
        for key in list(self.scopes):
            if key & rebuild:
                del self.scopes[key]  # it holds the old tables
            elif key & touched:
                self.scopes[key].clear()  # same tables, updated: only the built answers go
        if rebuild or "tasks" in delta:
            self.askers.clear()
        return touched

    # --- lookups ---

    def asker(self, task_id: str) -> Asker:
        found = self.askers.get(task_id)
        if found is not None:
            return found
        view = self.view
        task = view["tasks"].get(task_id) if view is not None else None
        if view is None or task is None:
            return NOBODY
        # The routing mesh's ingress network has no names: it is not part of any scope.
        nets = frozenset(n for n in task["addrs"] if n in self.nets)
        scope = self.scopes.get(nets)
        if scope is None:
            scope = self.scopes[nets] = Scope(tuple(self.nets[n] for n in sorted(nets)))
        own = parse_upstreams((task.get("dns") or {}).get("nameservers") or [])
        internal = bool(nets) and all(view["networks"][n]["internal"] for n in nets)
        asker = Asker(task_id, scope, own or self.upstreams, not internal)
        self.askers[task_id] = asker
        return asker


def _changes(old: nv.NodeView, delta: dict[str, Any]) -> tuple[
        set[str], dict[str, set[str]], dict[str, set[str]]]:
    """What a delta changes, per network: (networks to render anew, endpoint ids, service
    ids). An entry counts on every network it was on before and is on after."""
    nets = delta.get("networks") or {}
    rebuild = set(nets.get("set", {})) | set(nets.get("del", []))
    endpoints: dict[str, set[str]] = {}
    services: dict[str, set[str]] = {}
    for section, keys, out in (("endpoints", ("addrs",), endpoints),
                               ("services", ("vips", "aliases"), services)):
        change = delta.get(section)
        if not change:
            continue
        before: dict[str, Any] = old[section]  # type: ignore[literal-required]
        after: dict[str, Any] = change.get("set", {})
        for entry_id in (*after, *change.get("del", [])):
            for entry in (before.get(entry_id), after.get(entry_id)):
                for key in keys:
                    for net_id in (entry or {}).get(key) or {}:
                        out.setdefault(net_id, set()).add(entry_id)
    return rebuild, endpoints, services
