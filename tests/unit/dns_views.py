"""Hand-made NodeViews for the DNS unit tests (shared by tests/unit/test_dns_*.py)."""

from __future__ import annotations

import copy
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype

from shoal.dns import core
from shoal.dns.records import Ttls
from shoal.dns.tables import Tables
from shoal.model import view as nv

UPSTREAM = ("198.18.0.2", 53)


def att(ip: str) -> nv.Attachment:
    return {"ip": ip, "prefixlen": 24, "mac": nv.mac_for(ip)}


def network(net_id: str, name: str, third: int, internal: bool = False) -> nv.NetworkEntry:
    return {"id": net_id, "name": name, "subnet": f"10.0.{third}.0/24",
            "gateway": f"10.0.{third}.1", "vni": 4096 + third, "internal": internal,
            "encrypted": False, "ingress": False}


def endpoint(task_id: str, name: str, svc: str, addrs: dict[str, str], state: str = "running",
             healthy: bool = True) -> nv.EndpointEntry:
    return {"id": task_id, "name": name, "service_id": svc, "node_id": "node1",
            "state": state, "healthy": healthy,
            "addrs": {n: att(ip) for n, ip in addrs.items()}}


def task(task_id: str, name: str, svc: str, addrs: dict[str, str],
         nameservers: list[str] | None = None) -> nv.TaskEntry:
    return {"id": task_id, "name": name, "service_id": svc, "service_name": name.split(".")[0],
            "slot": 1, "desired_state": "running", "image": "local", "command": ["true"],
            "env": [], "dir": "", "dns": {"nameservers": nameservers or [], "search": [],
                                          "options": []},
            "addrs": {n: att(ip) for n, ip in addrs.items()}}


def base_view() -> nv.NodeView:
    """Two networks: appnet (n1, 10.0.1.0/24) and backnet (n2, 10.0.2.0/24), plus an internal
    one (n3). web (vip) is on both, with alias www on appnet; rr (dnsrr) on appnet; db (vip) on
    backnet only; priv on the internal network. Askers: `client` on appnet only, `bclient` on
    backnet only, `both` on both, `inner` on the internal network only."""
    view = nv.empty_view({"id": "node1", "name": "node1", "addr": "198.18.0.11"})
    view["revision"] = 7
    view["networks"] = {"n1": network("n1", "appnet", 1), "n2": network("n2", "backnet", 2),
                        "n3": network("n3", "privnet", 3, internal=True)}
    view["services"] = {
        "sweb": {"id": "sweb", "name": "web", "endpoint_mode": "vip",
                 "vips": {"n1": "10.0.1.2", "n2": "10.0.2.2"},
                 "aliases": {"n1": ["www"], "n2": []},
                 "ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                            "Name": "http"}]},
        "srr": {"id": "srr", "name": "rr", "endpoint_mode": "dnsrr", "vips": {},
                "aliases": {"n1": []},
                "ports": [{"Protocol": "udp", "TargetPort": 53, "PublishedPort": 0}]},
        "sdb": {"id": "sdb", "name": "db", "endpoint_mode": "vip", "vips": {"n2": "10.0.2.3"},
                "aliases": {"n2": []}, "ports": []},
        "spriv": {"id": "spriv", "name": "priv", "endpoint_mode": "vip",
                  "vips": {"n3": "10.0.3.2"}, "aliases": {"n3": []}, "ports": []},
    }
    view["endpoints"] = {
        "tweb1": endpoint("tweb1", "web.1", "sweb", {"n1": "10.0.1.11", "n2": "10.0.2.11"}),
        "tweb2": endpoint("tweb2", "web.2", "sweb", {"n1": "10.0.1.12", "n2": "10.0.2.12"}),
        "tweb3": endpoint("tweb3", "web.3", "sweb", {"n1": "10.0.1.13", "n2": "10.0.2.13"},
                          state="starting", healthy=False),
        "trr1": endpoint("trr1", "rr.1", "srr", {"n1": "10.0.1.21"}),
        "trr2": endpoint("trr2", "rr.2", "srr", {"n1": "10.0.1.22"}),
        "tdb1": endpoint("tdb1", "db.1", "sdb", {"n2": "10.0.2.31"}),
        "tpriv": endpoint("tpriv", "priv.1", "spriv", {"n3": "10.0.3.41"}),
    }
    view["tasks"] = {
        "client": task("client", "rr.1", "srr", {"n1": "10.0.1.21"}),
        "bclient": task("bclient", "db.1", "sdb", {"n2": "10.0.2.31"}),
        "both": task("both", "web.1", "sweb", {"n1": "10.0.1.11", "n2": "10.0.2.11"}),
        "inner": task("inner", "priv.1", "spriv", {"n3": "10.0.3.41"}),
        "own": task("own", "web.2", "sweb", {"n1": "10.0.1.12"},
                    nameservers=["192.0.2.53", "127.0.0.53"]),
    }
    return view


def tables(view: nv.NodeView | None = None, ttls: Ttls | None = None) -> Tables:
    t = Tables(ttls or Ttls(vip=600, task=0), (UPSTREAM,))
    t.set_view(copy.deepcopy(view or base_view()))
    return t


def ask(t: Tables, asker: str, name: str, rdtype: str = "A", tcp: bool = False,
        **make: Any) -> dns.message.Message | core.Forward | None:
    """Ask like a client would; a parsed answer, or what the core decided instead."""
    query = dns.message.make_query(name, rdtype, **make)
    out = core.respond(query.to_wire(), t.asker(asker), tcp)
    if isinstance(out, bytes):
        return dns.message.from_wire(out)
    return out


def addrs(msg: Any) -> list[str]:
    """The A addresses of an answer, sorted."""
    assert isinstance(msg, dns.message.Message), msg
    return sorted(r.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A
                  for r in rrset)


def rcode(msg: Any) -> str:
    assert isinstance(msg, dns.message.Message), msg
    return dns.rcode.to_text(msg.rcode())
