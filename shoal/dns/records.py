"""The names of one network, rendered from a NodeView (pure: view in, tables out).

On network N (named `appnet`) a service `web` with alias `db` and a task `web.1` give:

    web, db                     vip mode: web's VIP on N; dnsrr mode: its healthy task addrs
    tasks.web, tasks.db         the healthy task addresses on N
    web.1, web.1.<task id>      that task's address on N, while it runs
    _80._tcp.web, _http._tcp.web  SRV from EndpointSpec.Ports (TargetPort, or the port's Name)
    <any of the above>.appnet   the same, on N only
    3.1.0.10.in-addr.arpa       PTR: web.1.<task id>.appnet (task) or web.appnet (VIP)

A name in two networks is two entries, one per table: the asker's scope (scope.py) merges only
the tables of the networks it is on, which is what keeps network B's addresses from a task
that is only on network A.

Rendering is incremental. Each source (an endpoint, or a service with its healthy endpoints)
adds records under names; a name's answer is the union of what its sources added (two sources
may share a name, e.g. a service named like another's task). A change re-renders only the
sources it touches and merges only their names, so one task more in a network of 10,000 costs
microseconds, not a rebuild.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shoal.dns import wire
from shoal.model.view import EndpointEntry, NodeView, ServiceEntry

VIP_TTL = 600  # a VIP lives as long as its service (Docker uses 600 s for everything)
TASK_TTL = 0  # task addresses change on every scale or restart: never cache them


@dataclass(frozen=True, slots=True)
class Ttls:
    vip: int = VIP_TTL
    task: int = TASK_TTL


@dataclass(frozen=True, slots=True)
class SrvTarget:
    port: int
    target: str  # a name that resolves on the same network: web.appnet or web.1.<id>.appnet
    ip: str
    ttl: int


@dataclass(frozen=True, slots=True)
class AddrRecord:
    addrs: tuple[str, ...]
    ttl: int
    shuffle: bool


Source = tuple[str, str]  # ("ep", endpoint id) or ("svc", service id)
Rendered = list[tuple[str, str, object]]  # (table, name, record): "a", "srv" or "ptr"


@dataclass(slots=True)
class NetworkNames:
    """One network's names (lower case, no trailing dot) -> what they resolve to."""

    network_id: str
    suffix: str = ""  # ".appnet"
    addrs: dict[str, list[str]] = field(default_factory=dict)
    ttl: dict[str, int] = field(default_factory=dict)
    shuffle: set[str] = field(default_factory=set)  # names whose answers rotate
    srv: dict[str, list[SrvTarget]] = field(default_factory=dict)
    ptr: dict[str, tuple[str, int]] = field(default_factory=dict)  # reverse name -> target, ttl
    # how the above came to be: name -> source -> record, and what each source rendered
    _by_name: dict[tuple[str, str], dict[Source, object]] = field(default_factory=dict)
    _rendered: dict[Source, Rendered] = field(default_factory=dict)
    _members: dict[str, set[str]] = field(default_factory=dict)  # service id -> endpoint ids
    _service_of: dict[str, str] = field(default_factory=dict)  # endpoint id -> service id

    def known(self, name: str) -> bool:
        return name in self.addrs or name in self.srv or name in self.ptr

    # --- changes ---

    def update(self, view: NodeView, endpoints: set[str], services: set[str],
               ttls: Ttls) -> set[str]:
        """Render again these endpoints and services (present or gone from the view) and the
        services their endpoints belong to; return the names whose answers may have changed."""
        net = self.network_id
        services = set(services)
        for eid in endpoints:
            old_sid = self._service_of.pop(eid, None)
            if old_sid is not None:
                self._members.get(old_sid, set()).discard(eid)
                services.add(old_sid)
            ep = view["endpoints"].get(eid)
            if ep is not None and net in ep["addrs"]:
                self._service_of[eid] = ep["service_id"]
                self._members.setdefault(ep["service_id"], set()).add(eid)
                services.add(ep["service_id"])
        touched: set[tuple[str, str]] = set()
        for eid in endpoints:
            ep = view["endpoints"].get(eid)
            new = self._endpoint(ep, ttls) if ep is not None and net in ep["addrs"] else []
            touched |= self._replace(("ep", eid), new)
        for sid in services:
            svc = view["services"].get(sid)
            present = svc is not None and (net in svc["aliases"] or net in svc["vips"])
            new = self._service(view, svc, ttls) if present else []  # type: ignore[arg-type]
            touched |= self._replace(("svc", sid), new)
            if not present and not self._members.get(sid):
                self._members.pop(sid, None)
        for key in touched:
            self._merge(key)
        return {name for _, name in touched}

    def _replace(self, source: Source, new: Rendered) -> set[tuple[str, str]]:
        touched = set()
        for table, name, _ in self._rendered.pop(source, []):
            recs = self._by_name.get((table, name))
            if recs is not None:
                recs.pop(source, None)
                if not recs:
                    del self._by_name[(table, name)]
            touched.add((table, name))
        if new:
            self._rendered[source] = new
            for table, name, rec in new:
                self._by_name.setdefault((table, name), {})[source] = rec
                touched.add((table, name))
        return touched

    def _merge(self, key: tuple[str, str]) -> None:
        table, name = key
        recs = self._by_name.get(key)
        if table == "a":
            self.addrs.pop(name, None)
            self.ttl.pop(name, None)
            self.shuffle.discard(name)
            if recs and len(recs) == 1:  # the usual case: one source per name
                (one,) = recs.values()
                self.addrs[name] = list(one.addrs)  # type: ignore[attr-defined]
                self.ttl[name] = one.ttl  # type: ignore[attr-defined]
                if one.shuffle:  # type: ignore[attr-defined]
                    self.shuffle.add(name)
            elif recs:
                addrs: list[str] = []
                for source in sorted(recs):
                    rec: AddrRecord = recs[source]  # type: ignore[assignment]
                    addrs.extend(a for a in rec.addrs if a not in addrs)
                self.addrs[name] = addrs
                self.ttl[name] = min(r.ttl for r in recs.values())  # type: ignore[attr-defined]
                if any(r.shuffle for r in recs.values()):  # type: ignore[attr-defined]
                    self.shuffle.add(name)
        elif table == "srv":
            self.srv.pop(name, None)
            if recs:
                self.srv[name] = [t for s in sorted(recs) for t in recs[s]]  # type: ignore[attr-defined]
        else:
            self.ptr.pop(name, None)
            if recs:
                self.ptr[name] = recs[min(recs)]  # type: ignore[assignment]

    # --- rendering one source ---

    def _both(self, name: str) -> list[str]:
        """`name` and `name.<network>`, lower case, those that are valid DNS names."""
        return [n for n in (name.lower(), name.lower() + self.suffix) if _valid(n)]

    def _endpoint(self, ep: EndpointEntry, ttls: Ttls) -> Rendered:
        if ep["state"] != "running":
            return []
        ip = ep["addrs"][self.network_id]["ip"]
        long_name = f"{ep['name']}.{ep['id']}"
        out: Rendered = [("a", n, AddrRecord((ip,), ttls.task, True))
                         for n in self._both(ep["name"])]
        out += [("a", n, AddrRecord((ip,), ttls.task, False)) for n in self._both(long_name)]
        out.append(("ptr", wire.reverse_name(ip), (long_name.lower() + self.suffix, ttls.task)))
        return out

    def _service(self, view: NodeView, svc: ServiceEntry, ttls: Ttls) -> Rendered:
        net = self.network_id
        tasks = []  # (task name.id, ip) of its healthy endpoints, in id order
        for eid in sorted(self._members.get(svc["id"], ())):
            ep = view["endpoints"][eid]
            if ep["healthy"]:
                tasks.append((f"{ep['name']}.{eid}", ep["addrs"][net]["ip"]))
        task_ips = tuple(ip for _, ip in tasks)
        vip = svc["vips"].get(net)
        out: Rendered = []
        if svc["endpoint_mode"] == "vip" and vip:
            main = AddrRecord((vip,), ttls.vip, False)
            out.append(("ptr", wire.reverse_name(vip), (svc["name"].lower() + self.suffix,
                                                        ttls.vip)))
            targets = [(svc["name"].lower() + self.suffix, vip)]
        else:
            main = AddrRecord(task_ips, ttls.task, True)
            targets = [(name.lower() + self.suffix, ip) for name, ip in tasks]
        every = AddrRecord(task_ips, ttls.task, True)
        for name in (svc["name"], *svc["aliases"].get(net, [])):
            out += [("a", n, main) for n in self._both(name)]
            out += [("a", n, every) for n in self._both("tasks." + name)]
            for port in svc.get("ports") or []:
                target = port.get("TargetPort")
                if not isinstance(target, int):
                    continue
                proto = str(port.get("Protocol") or "tcp").lower()
                labels = sorted({str(target), *([str(port["Name"])] if port.get("Name")
                                                else [])})
                for label in labels:
                    srv = [SrvTarget(target, t, ip, main.ttl) for t, ip in targets]
                    out += [("srv", n, srv) for n in self._both(f"_{label}._{proto}.{name}")]
        return out


_NAME_RE = re.compile(r"[^.]{1,63}(?:\.[^.]{1,63})*")


def _valid(name: str) -> bool:
    """Encodes as a DNS name: ASCII, labels of 1 to 63 bytes, 253 characters at most."""
    return len(name) <= 253 and name.isascii() and _NAME_RE.fullmatch(name) is not None


def network_names(view: NodeView, network_id: str, ttls: Ttls) -> NetworkNames:
    """Every name on one network of the view."""
    out = NetworkNames(network_id, "." + view["networks"][network_id]["name"].lower())
    endpoints = {e for e, ep in view["endpoints"].items() if network_id in ep["addrs"]}
    services = {s for s, svc in view["services"].items()
                if network_id in svc["aliases"] or network_id in svc["vips"]}
    out.update(view, endpoints, services, ttls)
    return out
