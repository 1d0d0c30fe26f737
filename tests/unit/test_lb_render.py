"""The VIP load balancer's pure half: what each task sees, and the nft text for a change."""

from shoal.dataplane.lb import render, script
from shoal.model.view import empty_view


def view():
    v = empty_view({"id": "n1", "name": "node1", "addr": "198.18.0.11"})
    v["networks"] = {"A": {}, "B": {}}  # only the keys matter here
    v["tasks"] = {"me": {"addrs": {"A": {"ip": "10.0.1.9", "prefixlen": 24, "mac": ""}}}}
    v["services"] = {
        "web": {"id": "web", "name": "web", "endpoint_mode": "vip", "aliases": {}, "ports": [],
                "vips": {"A": "10.0.1.2", "B": "10.0.2.2"}},
        "rr": {"id": "rr", "name": "rr", "endpoint_mode": "dnsrr", "aliases": {}, "ports": [],
               "vips": {}},
        "idle": {"id": "idle", "name": "idle", "endpoint_mode": "vip", "aliases": {},
                 "ports": [], "vips": {"A": "10.0.1.20"}},
    }

    def ep(i, service, nets, healthy=True):
        return {"id": i, "name": i, "service_id": service, "node_id": "n2", "state": "running",
                "healthy": healthy,
                "addrs": {n: {"ip": ip, "prefixlen": 24, "mac": ""} for n, ip in nets.items()}}

    v["endpoints"] = {
        "w1": ep("w1", "web", {"A": "10.0.1.4", "B": "10.0.2.4"}),
        "w2": ep("w2", "web", {"A": "10.0.1.3", "B": "10.0.2.3"}),
        "w3": ep("w3", "web", {"A": "10.0.1.5"}, healthy=False),
        "r1": ep("r1", "rr", {"A": "10.0.1.7"}),
    }
    return v


def test_a_task_sees_only_vips_on_its_networks_with_healthy_backends_there():
    assert render(view(), "me") == {"10.0.1.2": ("10.0.1.3", "10.0.1.4"), "10.0.1.20": ()}


def test_first_program_is_the_skeleton_plus_every_vip():
    text = script(None, {"10.0.1.2": ("10.0.1.3", "10.0.1.4"), "10.0.1.20": ()})
    assert text.startswith("table ip shoal {}\ndelete table ip shoal\n")
    assert text.endswith(
        "add chain ip shoal vip_10_0_1_2\n"
        "add rule ip shoal vip_10_0_1_2 dnat to numgen random mod 2 map "
        "{ 0 : 10.0.1.3, 1 : 10.0.1.4 }\n"
        "add element ip shoal vips { 10.0.1.2 : goto vip_10_0_1_2 }\n"
        "add chain ip shoal vip_10_0_1_20\n"
        "add element ip shoal dead { 10.0.1.20 }\n")


def test_a_change_touches_only_the_vip_that_changed():
    old = {f"10.0.{i // 250}.{i % 250 + 2}": ("10.9.0.1",) for i in range(1000)}
    new = dict(old)
    new["10.0.0.2"] = ("10.9.0.1", "10.9.0.2")
    assert script(old, new) == (
        "flush chain ip shoal vip_10_0_0_2\n"
        "add rule ip shoal vip_10_0_0_2 dnat to numgen random mod 2 map "
        "{ 0 : 10.9.0.1, 1 : 10.9.0.2 }\n")
    assert script(old, old) == ""


def test_losing_the_last_backend_moves_the_vip_to_dead_and_back():
    down = script({"10.0.1.2": ("10.0.1.3",)}, {"10.0.1.2": ()})
    assert down == ("flush chain ip shoal vip_10_0_1_2\n"
                    "delete element ip shoal vips { 10.0.1.2 }\n"
                    "add element ip shoal dead { 10.0.1.2 }\n")
    up = script({"10.0.1.2": ()}, {"10.0.1.2": ("10.0.1.3",)})
    assert up == ("flush chain ip shoal vip_10_0_1_2\n"
                  "delete element ip shoal dead { 10.0.1.2 }\n"
                  "add rule ip shoal vip_10_0_1_2 dnat to 10.0.1.3\n"
                  "add element ip shoal vips { 10.0.1.2 : goto vip_10_0_1_2 }\n")


def test_a_removed_vip_leaves_map_and_chain():
    assert script({"10.0.1.2": ("10.0.1.3",)}, {}) == (
        "delete element ip shoal vips { 10.0.1.2 }\n"
        "flush chain ip shoal vip_10_0_1_2\n"
        "delete chain ip shoal vip_10_0_1_2\n")
