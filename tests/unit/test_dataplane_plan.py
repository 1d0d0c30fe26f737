"""The dataplane's render step: NodeView in, desired kernel entries out. No root needed."""

from __future__ import annotations

import pytest

from shoal.dataplane import names
from shoal.dataplane.plan import (
    FdbEntry,
    fdb_by_vni,
    neigh_by_vni,
    plan_fdb,
    plan_networks,
    plan_task_links,
)
from shoal.errors import KernelError
from shoal.model.view import NodeView, TaskEntry, empty_view, mac_for


def _ep(eid: str, node: str, addrs: dict[str, str]) -> dict:
    return {
        "id": eid, "name": f"{eid}.1", "service_id": "s", "node_id": node, "state": "running",
        "healthy": True,
        "addrs": {n: {"ip": ip, "prefixlen": 24, "mac": mac_for(ip).upper()}
                  for n, ip in addrs.items()},
    }


def _view() -> NodeView:
    view = empty_view({"id": "n1", "name": "node1", "addr": "198.18.0.11"})
    view["networks"] = {
        "neta": {"id": "neta", "name": "a", "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
                 "vni": 4096, "internal": False, "encrypted": False},
        "netb": {"id": "netb", "name": "b", "subnet": "10.0.2.0/24", "gateway": "10.0.2.1",
                 "vni": 4097, "internal": False, "encrypted": False},
    }
    view["peers"] = {
        "n1": {"id": "n1", "name": "node1", "addr": "198.18.0.11"},
        "n2": {"id": "n2", "name": "node2", "addr": "198.18.0.12"},
        "n3": {"id": "n3", "name": "node3", "addr": "198.18.0.13"},
    }
    view["endpoints"] = {
        "local": _ep("local", "n1", {"neta": "10.0.1.3"}),
        "remote": _ep("remote", "n2", {"neta": "10.0.1.4", "netb": "10.0.2.4"}),
        "other": _ep("other", "n3", {"netb": "10.0.2.5", "netc": "10.0.3.5"}),
        "nopeer": _ep("nopeer", "n9", {"neta": "10.0.1.9"}),
    }
    return view


def _task(tid: str, addrs: dict[str, str]) -> TaskEntry:
    return {
        "id": tid, "name": "web.1", "service_id": "s", "service_name": "web", "slot": 1,
        "desired_state": "running", "image": "busybox", "command": ["sleep", "1"], "env": [],
        "dir": "",
        "addrs": {n: {"ip": ip, "prefixlen": 24, "mac": mac_for(ip)} for n, ip in addrs.items()},
    }


def test_plan_networks_maps_vni_to_network() -> None:
    assert plan_networks(_view()) == {4096: "neta", 4097: "netb"}


def test_plan_fdb_only_remote_endpoints_on_our_networks() -> None:
    assert plan_fdb(_view(), "n1") == {
        FdbEntry(4096, "02:42:0a:00:01:04", "10.0.1.4", "198.18.0.12"),
        FdbEntry(4097, "02:42:0a:00:02:04", "10.0.2.4", "198.18.0.12"),
        FdbEntry(4097, "02:42:0a:00:02:05", "10.0.2.5", "198.18.0.13"),
    }


def test_plan_fdb_from_another_node_sees_ours() -> None:
    view = _view()
    view["node"] = view["peers"]["n2"]
    got = plan_fdb(view, "n2")
    assert FdbEntry(4096, "02:42:0a:00:01:03", "10.0.1.3", "198.18.0.11") in got
    assert all(e.peer_addr != "198.18.0.12" for e in got)


def test_plan_fdb_empty_view() -> None:
    assert plan_fdb(empty_view({"id": "n1", "name": "n", "addr": "198.18.0.11"}), "n1") == set()


def test_tables_by_vni() -> None:
    entries = plan_fdb(_view(), "n1")
    assert fdb_by_vni(entries) == {
        4096: {"02:42:0a:00:01:04": "198.18.0.12"},
        4097: {"02:42:0a:00:02:04": "198.18.0.12", "02:42:0a:00:02:05": "198.18.0.13"},
    }
    assert neigh_by_vni(entries) == {
        4096: {"10.0.1.4": "02:42:0a:00:01:04"},
        4097: {"10.0.2.4": "02:42:0a:00:02:04", "10.0.2.5": "02:42:0a:00:02:05"},
    }


def test_duplicate_mac_resolves_deterministically() -> None:
    a = FdbEntry(4096, "02:42:0a:00:01:04", "10.0.1.4", "198.18.0.12")
    b = FdbEntry(4096, "02:42:0a:00:01:04", "10.0.1.4", "198.18.0.13")
    assert fdb_by_vni({a, b}) == fdb_by_vni({b, a}) == {4096: {a.mac: "198.18.0.13"}}


def test_plan_task_links_sorted_by_network() -> None:
    links = plan_task_links(_task("abcdef0123456789xyz", {"netb": "10.0.2.7", "neta": "10.0.1.7"}),
                            _view())
    assert [(tl.index, tl.network_id, tl.ifname, tl.host_ifname, tl.bridge) for tl in links] == [
        (0, "neta", "eth0", "shvabcdef010", "shbr4096"),
        (1, "netb", "eth1", "shvabcdef011", "shbr4097"),
    ]
    assert (links[0].ip, links[0].prefixlen, links[0].mac) == ("10.0.1.7", 24, "02:42:0a:00:01:07")
    assert all(len(tl.host_ifname) <= 15 for tl in links)


def test_plan_task_links_missing_network_is_an_error() -> None:
    with pytest.raises(KernelError, match="netc"):
        plan_task_links(_task("t1", {"netc": "10.0.3.2"}), _view())


def test_names() -> None:
    assert names.bridge_name(16777215) == "shbr16777215"
    assert names.netns_name("shoal-lab1-", "0123456789abcdefghij") == "shoal-lab1-0123456789ab"
    assert names.task_id_of("shoal-lab1-", "shoal-lab1-0123456789ab") == "0123456789ab"
    assert names.task_id_of("shoal-lab1-", "shoal-lab1-node1") is None
    assert names.task_id_of("shoal-lab1-", "shoal-lab2-0123456789ab") is None
    assert names.vni_of("shvx4096", names.VXLAN_PREFIX) == 4096
    assert names.vni_of("shvx1234abc0", names.VXLAN_PREFIX) is None
    assert names.vni_of("shbr4096", names.VXLAN_PREFIX) is None
