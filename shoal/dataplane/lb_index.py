"""The healthy backends of every VIP, kept up to date from view deltas.

Rendering a task's VIPs from the whole view walks every service and endpoint: O(services) per
local task on every change. The index instead follows the deltas the agent receives: a delta
names the services and endpoints it touches, and only those services' VIPs are recomputed, so a
change costs what it touches. A full view (a snapshot, or a delta that was missed) rebuilds it.
"""

from __future__ import annotations

from typing import Any

from shoal.model.view import EndpointEntry, NodeView, ServiceEntry

Backends = tuple[str, ...]
Changes = dict[str, dict[str, Backends | None]]  # network -> VIP -> backends now (None: gone)


class VipIndex:
    """Per network, each VIP's healthy backend addresses on that network (sorted)."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.revision: int | None = None  # of the view it reflects; None: never built
        self.by_network: dict[str, dict[str, Backends]] = {}
        self._vips: dict[str, dict[str, str]] = {}  # service id -> network -> VIP
        self._published: dict[str, dict[str, str]] = {}  # the VIPs by_network holds for it
        self._healthy: dict[str, dict[str, dict[str, str]]] = {}  # service -> endpoint -> addrs
        self._service_of: dict[str, str] = {}  # healthy endpoint id -> service id

    def rebuild(self, view: NodeView) -> None:
        self._clear()
        for svc in view["services"].values():
            self._set_service(svc)
        for ep in view["endpoints"].values():
            self._set_endpoint(ep)
        for service_id in self._vips:
            self._refresh(service_id, {})
        self.revision = view["revision"]

    def apply(self, delta: dict[str, Any]) -> Changes:
        """Follow one delta (nv.diff's shape); returns the VIPs whose backends it changed."""
        touched: set[str] = set()
        services = delta.get("services") or {"set": {}, "del": []}
        endpoints = delta.get("endpoints") or {"set": {}, "del": []}
        for service_id in services["del"]:
            self._vips.pop(service_id, None)
            touched.add(service_id)
        for svc in services["set"].values():
            self._set_service(svc)
            touched.add(svc["id"])
        for endpoint_id in [*endpoints["del"], *endpoints["set"]]:
            gone = self._service_of.pop(endpoint_id, None)
            if gone is not None:
                self._healthy[gone].pop(endpoint_id, None)
                touched.add(gone)
        for ep in endpoints["set"].values():
            if self._set_endpoint(ep):
                touched.add(ep["service_id"])
        changes: Changes = {}
        for service_id in touched:
            self._refresh(service_id, changes)
        self.revision = delta.get("revision", self.revision)
        return changes

    def table(self, networks: set[str]) -> dict[str, Backends]:
        """Every VIP a task on these networks can reach."""
        out: dict[str, Backends] = {}
        for net in networks:
            out.update(self.by_network.get(net, {}))
        return out

    def _set_service(self, svc: ServiceEntry) -> None:
        self._vips[svc["id"]] = dict(svc["vips"]) if svc["endpoint_mode"] == "vip" else {}

    def _set_endpoint(self, ep: EndpointEntry) -> bool:
        if not ep["healthy"]:
            return False
        addrs = {net: att["ip"] for net, att in ep["addrs"].items()}
        self._healthy.setdefault(ep["service_id"], {})[ep["id"]] = addrs
        self._service_of[ep["id"]] = ep["service_id"]
        return True

    def _refresh(self, service_id: str, changes: Changes) -> None:
        """Recompute one service's VIPs from its healthy endpoints; record what moved."""
        vips = self._vips.get(service_id, {})
        healthy = self._healthy.get(service_id, {})
        for net, vip in vips.items():
            backends = tuple(sorted(a[net] for a in healthy.values() if net in a))
            table = self.by_network.setdefault(net, {})
            if table.get(vip) != backends:
                table[vip] = backends
                changes.setdefault(net, {})[vip] = backends
        # VIPs the service no longer has (removed, moved, or its mode became dnsrr).
        for net, vip in self._published.pop(service_id, {}).items():
            if vips.get(net) != vip and vip in self.by_network.get(net, {}):
                del self.by_network[net][vip]
                changes.setdefault(net, {})[vip] = None
        if vips:
            self._published[service_id] = dict(vips)
        if not healthy:
            self._healthy.pop(service_id, None)
