"""Isolation's pure half: the node filter rendered from a view (golden text), the egress
gateway's addresses and veth, and the one place that decides a task's default routes."""

from __future__ import annotations

import pytest

from shoal.dataplane import gateway
from shoal.dataplane.firewall import Policy, parse_sources, render, script
from shoal.dataplane.plan import (
    MAIN_TABLE,
    ReplyRoute,
    mark_for,
    plan_egress_link,
    plan_main_route,
    plan_task_routes,
)
from shoal.errors import InvalidArgument
from shoal.model.view import NodeView, TaskEntry, empty_view, mac_for


def _net(net_id: str, vni: int, subnet: str, internal: bool = False,
         ingress: bool = False) -> dict:
    return {"id": net_id, "name": net_id, "subnet": subnet, "gateway": "", "vni": vni,
            "internal": internal, "encrypted": False, "ingress": ingress}


def _view() -> NodeView:
    node = {"id": "n1", "name": "node1", "addr": "198.18.0.11", "ingress_addr": "10.255.0.2"}
    view = empty_view(node)  # type: ignore[arg-type]
    view["networks"] = {
        "ing": _net("ing", 4096, "10.255.0.0/16", ingress=True),
        "front": _net("front", 4097, "10.0.1.0/24"),
        "priv": _net("priv", 4098, "10.0.2.0/24", internal=True),
    }
    view["peers"] = {
        "n1": {"id": "n1", "name": "node1", "addr": "198.18.0.11", "ingress_addr": "10.255.0.2"},
        "n2": {"id": "n2", "name": "node2", "addr": "198.18.0.12", "ingress_addr": "10.255.0.3"},
        "n10": {"id": "n10", "name": "node10", "addr": "198.18.0.20", "ingress_addr": ""},
    }
    view["services"] = {
        "web": {"id": "web", "name": "web", "endpoint_mode": "vip", "vips": {}, "aliases": {},
                "labels": {}, "ports": [
                    {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                     "PublishMode": "ingress"},
                    {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353,
                     "PublishMode": "host"}]},
        "db": {"id": "db", "name": "db", "endpoint_mode": "vip", "vips": {}, "aliases": {},
               "labels": {}, "ports": []},
    }
    return view


def _task(tid: str, addrs: dict[str, str]) -> TaskEntry:
    return {  # type: ignore[typeddict-item]
        "id": tid, "name": "t.1", "service_id": "s", "service_name": "t", "slot": 1,
        "desired_state": "running", "image": "", "command": ["true"], "env": [], "dir": "",
        "addrs": {n: {"ip": ip, "prefixlen": 24, "mac": mac_for(ip)} for n, ip in addrs.items()},
    }


MANAGER_NODE = """\
table inet shoal_filter {}
delete table inet shoal_filter
table inet shoal_filter {
  set peers {
    type ipv4_addr
    elements = { 198.18.0.11, 198.18.0.12, 198.18.0.20 }
  }
  set published {
    type inet_proto . inet_service
    elements = { tcp . 8080, udp . 5353 }
  }
  chain input {
    type filter hook input priority filter; policy accept;
    udp dport 4790 counter drop
    iifname "eth0" goto from_outside
    iifname "shgw0" goto from_tasks
    iifname "shbr*" goto from_tasks
  }
  chain from_outside {
    ct state established,related accept
    icmp type { destination-unreachable, time-exceeded, parameter-problem } accept
    icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, \
nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
    meta l4proto . th dport @published accept
    tcp dport { 80, 443 } accept
    ip saddr @peers udp dport 4789 accept
    ip saddr @peers tcp dport 2377 accept
    ip saddr { 198.18.0.11-198.18.0.13 } tcp dport 2377 accept
    counter drop
  }
  chain from_tasks {
    ct state established,related accept
    icmp type { destination-unreachable, time-exceeded, parameter-problem } accept
    icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, \
nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
    meta l4proto . th dport @published accept
    tcp dport { 80, 443 } accept
    counter drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct status dnat accept
    iifname . oifname { "shbr4096" . "shbr4096", "shbr4097" . "shbr4097", \
"shbr4098" . "shbr4098" } accept
    iifname "shgw0" oifname "eth0" goto egress
    iifname "shgw0" drop
    iifname "shbr*" drop
    oifname "shgw0" drop
    oifname "shbr*" drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    udp dport 4790 counter drop
  }
  chain egress {
    ip daddr @peers udp dport { 4789, 4790 } drop
    ip daddr @peers tcp dport 2377 drop
    accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 172.18.0.0/16 oifname != "shgw0" masquerade
  }
}
table bridge shoal_filter {}
delete table bridge shoal_filter
table bridge shoal_filter {
  set nodes {
    type ipv4_addr
    elements = { 10.255.0.2, 10.255.0.3 }
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr 10.255.0.0/16 ip daddr 10.255.0.0/16 ip saddr != @nodes ip daddr != @nodes drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    ip saddr 10.255.0.0/16 ip daddr 10.255.0.0/16 ip saddr != @nodes ip daddr != @nodes drop
  }
}
"""


def test_manager_node_golden() -> None:
    policy = render(_view(), "eth0", "198.18.0.11:2377", (80, 443),
                    ("198.18.0.11-198.18.0.13",), closed=True)
    assert script(policy) == MANAGER_NODE


def test_a_shared_host_closes_only_shoals_own_ports_to_outsiders() -> None:
    text = script(render(_view(), "eth0", "198.18.0.11:2377", (80, 443)))
    chain = text.split("chain from_outside {")[1].split("chain from_tasks")[0]
    assert chain.splitlines()[-4:-2] == ["    udp dport 4789 counter drop",
                                         "    tcp dport 2377 counter drop"]
    assert "    counter drop" not in chain.splitlines()


def test_a_worker_node_opens_no_control_port_but_keeps_tasks_off_the_managers() -> None:
    view = _view()
    view["node"] = view["peers"]["n2"]
    text = script(render(view, "ul0", "198.18.0.11:2377", (80, 0)))
    assert "tcp dport 2377 accept" not in text
    assert "ip daddr @peers tcp dport 2377 drop" in text  # egress to the manager: no
    assert 'iifname "ul0" goto from_outside' in text
    assert "tcp dport { 80 } accept" in text  # no TLS mesh port


def test_the_control_port_is_open_to_anyone_unless_narrowed() -> None:
    text = script(render(_view(), "eth0", "198.18.0.11:2377", (80, 443)))
    assert "    tcp dport 2377 accept\n" in text
    text = script(render(_view(), "eth0", "198.18.0.11:2377", (80, 443), ()))
    assert "ip saddr @peers tcp dport 2377 accept" in text
    assert "    tcp dport 2377 accept\n" not in text and "ip saddr {" not in text


def test_no_ingress_no_bridge_table_and_empty_sets_are_valid() -> None:
    view = empty_view({"id": "n1", "name": "node1", "addr": "198.18.0.11"})  # type: ignore
    policy = render(view, "eth0", None, ())
    assert policy == Policy(underlay="eth0", peers=(), published=(), mesh_ports=(),
                            control_port=None, control_from=None, manager_port=None,
                            bridges=(), ingress_subnet=None, node_ingress=())
    text = script(policy)
    assert "table bridge shoal_filter {\n" not in text
    assert text.endswith("table bridge shoal_filter {}\ndelete table bridge shoal_filter\n")
    assert "elements" not in text and "@published" not in text and "iifname . oifname" not in text
    assert "  set peers {\n    type ipv4_addr\n  }\n" in text


def test_render_is_stable() -> None:
    a = render(_view(), "eth0", "198.18.0.11:2377", (443, 80, 80))
    view = _view()
    view["peers"] = dict(reversed(list(view["peers"].items())))
    assert render(view, "eth0", "198.18.0.11:2377", (80, 443)) == a
    assert a.mesh_ports == (80, 443)


def test_parse_sources() -> None:
    assert parse_sources(["198.18.0.11-198.18.0.13", "10.1.0.0/16,198.18.0.2"]) == (
        "198.18.0.11-198.18.0.13", "10.1.0.0/16", "198.18.0.2/32")
    for bad in ("198.18.0.13-198.18.0.11", "nonsense", "10.0.0.0/33", "1.2.3.4-x"):
        with pytest.raises(InvalidArgument, match="--control-from"):
            parse_sources([bad])


# -- the egress gateway ---------------------------------------------------------------------


def test_gateway_addresses_are_derived_from_the_task_and_never_shared() -> None:
    first = gateway.allocate("task-a", set())
    assert first == gateway.allocate("task-a", set())  # same task, same address
    assert gateway.in_pool(first) and first != gateway.ADDR
    assert gateway.allocate("task-a", {first}) != first  # a clash probes on
    addrs = gateway.Addresses()
    a = addrs.claim("task-a", None)
    assert a == first and addrs.claim("task-a", "172.18.9.9") == first
    # after a restart the address found in the namespace is kept, unless another task has it
    fresh = gateway.Addresses()
    assert fresh.claim("task-b", "172.18.9.9") == "172.18.9.9"
    assert fresh.claim("task-c", "172.18.9.9") != "172.18.9.9"
    assert fresh.claim("task-d", "10.0.0.5") == gateway.allocate("task-d", set())
    fresh.release("task-b")
    assert fresh.claim("task-e", "172.18.9.9") == "172.18.9.9"
    assert not gateway.in_pool("172.18.0.1") and not gateway.in_pool("172.18.255.255")
    assert not gateway.in_pool("172.19.0.2") and gateway.in_pool("172.18.0.2")


def test_a_task_on_any_non_internal_network_gets_an_isolated_gateway_veth() -> None:
    view = _view()
    both = _task("abcdef0123456789", {"priv": "10.0.2.5", "front": "10.0.1.5"})
    link = plan_egress_link(both, view, "172.18.3.4")
    assert link is not None
    assert (link.index, link.ifname, link.host_ifname, link.bridge, link.ip, link.prefixlen,
            link.mac, link.isolated) == (2, "eth2", "shvabcdef012", "shgw0", "172.18.3.4", 16,
                                         "02:42:ac:12:03:04", True)
    assert plan_egress_link(_task("t2", {"priv": "10.0.2.6"}), view, "172.18.3.5") is None
    assert plan_egress_link(_task("t3", {"ing": "10.255.0.9"}), view, "172.18.3.6") is not None
    view["tasks"] = {"t2": _task("t2", {"priv": "10.0.2.6"})}
    assert not gateway.needed(view)
    view["tasks"]["t1"] = both
    assert gateway.needed(view)


def test_the_main_route_is_the_gateway_and_ingress_replies_keep_their_tables() -> None:
    view = _view()
    task = _task("t1", {"ing": "10.255.0.9", "front": "10.0.1.9"})
    egress = plan_egress_link(task, view, "172.18.3.4")
    routes = plan_task_routes(task, view, egress)
    ing = "eth1"  # "front" < "ing"
    assert routes == [
        ReplyRoute(mark_for("10.255.0.2"), 0x10000 | mark_for("10.255.0.2"), "10.255.0.2", ing),
        ReplyRoute(mark_for("10.255.0.3"), 0x10000 | mark_for("10.255.0.3"), "10.255.0.3", ing),
        ReplyRoute(0, MAIN_TABLE, gateway.ADDR, "eth2"),
    ]
    # without a gateway veth, ingress tasks keep the main route via their own node
    assert plan_main_route(task, view, None) == ReplyRoute(0, MAIN_TABLE, "10.255.0.2", ing)
    # internal networks only: no default route at all
    internal = _task("t2", {"priv": "10.0.2.6"})
    assert plan_task_routes(internal, view, None) == []
