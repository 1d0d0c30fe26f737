"""The VIP load balancer's pure half: what each task sees, and the nft text for a change."""

from shoal.dataplane.lb import render
from shoal.dataplane.lb_rules import first_slot, script
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


def test_slot_ranges_of_different_backend_counts_never_overlap():
    taken: set[int] = set()
    for n in range(1, 200):
        mine = set(range(first_slot(n), first_slot(n) + n))
        assert not mine & taken
        taken |= mine


def test_first_program_is_the_skeleton_one_rule_per_count_and_every_vip():
    text = script(None, {"10.0.1.2": ("10.0.1.3", "10.0.1.4"), "10.0.1.20": (),
                         "10.0.1.30": ("10.0.1.31",)})
    assert text.startswith("table ip shoal {}\ndelete table ip shoal\n")
    assert text.endswith(
        "add rule ip shoal nat_output dnat to ip daddr . numgen random mod 1 offset 0 "
        "map @backends\n"
        "add rule ip shoal nat_output dnat to ip daddr . numgen random mod 2 offset 1 "
        "map @backends\n"
        "add element ip shoal backends { 10.0.1.2 . 1 : 10.0.1.3, 10.0.1.2 . 2 : 10.0.1.4, "
        "10.0.1.30 . 0 : 10.0.1.31 }\n"
        "add element ip shoal dead { 10.0.1.20 }\n")
    # No chain and no set per VIP: their count would make every later transaction O(VIPs).
    assert "add chain" not in text and "vmap" not in text


def test_a_change_touches_only_the_slots_that_changed():
    old = {f"10.0.{i // 250}.{i % 250 + 2}": ("10.9.0.1", "10.9.0.2", "10.9.0.3")
           for i in range(1000)}
    new = dict(old)
    new["10.0.0.2"] = ("10.9.0.1", "10.9.0.3", "10.9.0.4")
    assert script(old, new) == (
        "delete element ip shoal backends { 10.0.0.2 . 4, 10.0.0.2 . 5 }\n"
        "add element ip shoal backends { 10.0.0.2 . 4 : 10.9.0.3, 10.0.0.2 . 5 : 10.9.0.4 }\n")
    assert script(old, old) == ""


def test_a_new_backend_count_moves_the_vip_to_its_slots_and_adds_one_rule():
    assert script({"10.0.1.2": ("10.0.1.3",)}, {"10.0.1.2": ("10.0.1.3", "10.0.1.4")}) == (
        "add rule ip shoal nat_output dnat to ip daddr . numgen random mod 2 offset 1 "
        "map @backends\n"
        "delete element ip shoal backends { 10.0.1.2 . 0 }\n"
        "add element ip shoal backends { 10.0.1.2 . 1 : 10.0.1.3, 10.0.1.2 . 2 : 10.0.1.4 }\n")


def test_losing_the_last_backend_moves_the_vip_to_dead_and_back():
    down = script({"10.0.1.2": ("10.0.1.3",)}, {"10.0.1.2": ()})
    assert down == ("delete element ip shoal backends { 10.0.1.2 . 0 }\n"
                    "add element ip shoal dead { 10.0.1.2 }\n")
    up = script({"10.0.1.2": ()}, {"10.0.1.2": ("10.0.1.3",)})
    assert up == ("add rule ip shoal nat_output dnat to ip daddr . numgen random mod 1 "
                  "offset 0 map @backends\n"
                  "delete element ip shoal dead { 10.0.1.2 }\n"
                  "add element ip shoal backends { 10.0.1.2 . 0 : 10.0.1.3 }\n")


def test_a_removed_vip_leaves_every_set():
    assert script({"10.0.1.2": ("10.0.1.3",), "10.0.1.20": ()}, {}) == (
        "delete element ip shoal backends { 10.0.1.2 . 0 }\n"
        "delete element ip shoal dead { 10.0.1.20 }\n")
