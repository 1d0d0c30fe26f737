"""The load balancer follows view deltas: it renders and programs only what a delta touched,
and always ends where a full render of the view would."""

import copy
import random

import pytest

from shoal.dataplane import lb as lbmod
from shoal.dataplane.lb_index import VipIndex
from shoal.model import view as nv

NETS = ("A", "B")


class FakeNft:
    """Records the transactions a namespace would get."""

    made: list["FakeNft"] = []

    def __init__(self, netns):
        self.netns, self.scripts, self.closed = netns, [], False
        FakeNft.made.append(self)

    def run(self, script):
        self.scripts.append(script)
        return ""

    def drop_cache(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture(autouse=True)
def fake_nft(monkeypatch):
    FakeNft.made = []
    monkeypatch.setattr(lbmod, "Nft", FakeNft)


def ep(eid, sid, nets, healthy=True):
    return {"id": eid, "name": eid, "service_id": sid, "node_id": "n2", "state": "running",
            "healthy": healthy,
            "addrs": {n: {"ip": ip, "prefixlen": 24, "mac": ""} for n, ip in nets.items()}}


def svc(sid, vips, mode="vip"):
    return {"id": sid, "name": sid, "endpoint_mode": mode, "aliases": {}, "ports": [],
            "labels": {}, "vips": vips}


def task(tid, nets):
    return {"id": tid, "addrs": {n: {"ip": f"10.9.{i}.9", "prefixlen": 24, "mac": ""}
                                 for i, n in enumerate(nets)}}


def base_view(services=50):
    v = nv.empty_view({"id": "n1", "name": "node1", "addr": "198.18.0.11", "ingress_addr": ""})
    v["revision"] = 1
    v["networks"] = {n: {} for n in NETS}
    v["tasks"] = {"ta": task("ta", ["A"]), "tab": task("tab", ["A", "B"])}
    for s in range(services):
        sid = f"s{s}"
        v["services"][sid] = svc(sid, {"A": f"10.0.{s}.2", "B": f"10.1.{s}.2"})
        for t in range(2):
            v["endpoints"][f"{sid}t{t}"] = ep(f"{sid}t{t}", sid,
                                              {"A": f"10.0.{s}.{10 + t}",
                                               "B": f"10.1.{s}.{10 + t}"})
    return v


def mutate(v, rng, step):
    """One random change of the kind the manager sends: scale, health, remove, add, move."""
    new = copy.deepcopy(v)
    new["revision"] = v["revision"] + 1
    sids = sorted(new["services"])
    sid = rng.choice(sids)
    mine = sorted(k for k, e in new["endpoints"].items() if e["service_id"] == sid)
    kind = rng.choice(["add", "remove", "health", "service-gone", "service-new", "dnsrr",
                       "vip-moves", "net-only"])
    if kind == "add":
        n = int(sid[1:])
        new["endpoints"][f"x{step}"] = ep(f"x{step}", sid, {"A": f"10.0.{n}.{100 + step % 150}"})
    elif kind == "remove" and mine:
        del new["endpoints"][rng.choice(mine)]
    elif kind == "health" and mine:
        e = new["endpoints"][rng.choice(mine)]
        e["healthy"] = not e["healthy"]
    elif kind == "service-gone":
        del new["services"][sid]
    elif kind == "service-new":
        new["services"][f"n{step}"] = svc(f"n{step}", {"B": f"10.2.{step % 250}.2"})
        new["endpoints"][f"ne{step}"] = ep(f"ne{step}", f"n{step}", {"B": f"10.2.{step % 250}.3"})
    elif kind == "dnsrr":
        new["services"][sid]["endpoint_mode"] = "dnsrr"
        new["services"][sid]["vips"] = {}
    elif kind == "vip-moves" and "A" in new["services"][sid]["vips"]:
        new["services"][sid]["vips"]["A"] = f"10.3.{step % 250}.2"
    elif kind == "net-only" and mine:
        e = new["endpoints"][rng.choice(mine)]
        e["addrs"].pop("A", None)
    return new


def programmed(balancer, tid):
    return balancer._tasks[tid].vips


def test_the_index_follows_deltas_to_what_a_full_render_gives():
    rng = random.Random(4)
    v = base_view()
    index = VipIndex()
    index.rebuild(v)
    for step in range(300):
        new = mutate(v, rng, step)
        delta = nv.diff(v, new)
        if delta is None:
            continue
        index.apply(delta)
        v = new
        for tid, t in v["tasks"].items():
            assert index.table(set(t["addrs"])) == lbmod.render(v, tid), step


def test_every_sync_programs_what_a_full_render_gives_touching_only_changed_vips():
    rng = random.Random(11)
    v = base_view()
    lb = lbmod.LoadBalancer()
    netns = {"ta": "ns-a", "tab": "ns-ab"}
    lb.sync(v, netns)
    rebuilds = []
    lb._index.rebuild = rebuilds.append  # from here on, deltas only: no full rebuild at all
    for step in range(300):
        new = mutate(v, rng, step)
        delta = nv.diff(v, new)
        if delta is None:
            continue
        lb.observe(delta)
        before = {tid: dict(programmed(lb, tid)) for tid in netns}
        sent = {tid: len(lb._tasks[tid].nft.scripts) for tid in netns}
        lb.sync(new, netns)
        v = new
        for tid in netns:
            wanted = lbmod.render(v, tid)
            assert programmed(lb, tid) == wanted, step
            moved = {vip for vip in before[tid].keys() | wanted.keys()
                     if before[tid].get(vip) != wanted.get(vip)}
            scripts = lb._tasks[tid].nft.scripts[sent[tid]:]
            # One transaction when something of this task moved, none otherwise; and it names
            # no VIP but the ones that moved.
            assert len(scripts) == (1 if moved else 0), step
            mentioned = {w for s in scripts for w in s.replace(",", " ").split()
                         if w.count(".") == 3 and w.startswith("10.") and w[:5] != "10.9."}
            for vip in set(before[tid]) | set(wanted):
                if vip not in moved:
                    assert vip not in mentioned, (step, vip)


def test_a_delta_it_never_saw_means_a_full_compare_not_a_wrong_table():
    v = base_view(5)
    lb = lbmod.LoadBalancer()
    lb.sync(v, {"ta": "ns-a"})
    new = copy.deepcopy(v)
    new["revision"] = 2
    del new["endpoints"]["s1t0"]
    lb.sync(new, {"ta": "ns-a"})  # no observe(): the index is at revision 1, the view at 2
    assert programmed(lb, "ta") == lbmod.render(new, "ta")
    assert programmed(lb, "ta")["10.0.1.2"] == ("10.0.1.11",)


def test_deltas_newer_than_the_view_wait_for_the_next_sync():
    v1 = base_view(3)
    lb = lbmod.LoadBalancer()
    lb.sync(v1, {"ta": "ns-a"})
    v2 = copy.deepcopy(v1)
    v2["revision"] = 2
    del v2["endpoints"]["s0t0"]
    v3 = copy.deepcopy(v2)
    v3["revision"] = 3
    del v3["endpoints"]["s2t1"]
    lb.observe(nv.diff(v1, v2))
    lb.observe(nv.diff(v2, v3))
    lb.sync(v2, {"ta": "ns-a"})  # the reconcile that took v2 runs before v3 arrived
    assert programmed(lb, "ta") == lbmod.render(v2, "ta")
    lb.sync(v3, {"ta": "ns-a"})
    assert programmed(lb, "ta") == lbmod.render(v3, "ta")
    assert lb._index.revision == 3


def test_a_task_that_leaves_loses_its_context_and_one_that_comes_gets_the_skeleton():
    v = base_view(3)
    lb = lbmod.LoadBalancer()
    lb.sync(v, {"ta": "ns-a"})
    first = lb._tasks["ta"].nft
    assert first.scripts[0].startswith("table ip shoal {}\ndelete table ip shoal\n")
    lb.sync(v, {"tab": "ns-ab"})
    assert first.closed and "ta" not in lb._tasks
    assert lb._tasks["tab"].nft.scripts[0].startswith("table ip shoal {}")
    assert programmed(lb, "tab") == lbmod.render(v, "tab")


def test_a_refused_transaction_starts_that_namespace_over():
    v = base_view(3)
    lb = lbmod.LoadBalancer()
    lb.sync(v, {"ta": "ns-a"})

    def refuse(script):
        raise RuntimeError("refused")

    lb._tasks["ta"].nft.run = refuse
    new = copy.deepcopy(v)
    new["revision"] = 2
    del new["endpoints"]["s0t0"]
    lb.observe(nv.diff(v, new))
    with pytest.raises(RuntimeError):
        lb.sync(new, {"ta": "ns-a"})
    assert "ta" not in lb._tasks
    lb.sync(new, {"ta": "ns-a"})
    assert lb._tasks["ta"].nft.scripts[0].startswith("table ip shoal {}")
    assert programmed(lb, "ta") == lbmod.render(new, "ta")


def test_a_task_started_between_syncs_does_not_swallow_the_others_changes():
    v = base_view(3)
    lb = lbmod.LoadBalancer()
    lb.sync(v, {"ta": "ns-a"})
    new = copy.deepcopy(v)
    new["revision"] = 2
    del new["endpoints"]["s0t0"]
    new["tasks"]["tb"] = task("tb", ["A"])
    lb.observe(nv.diff(v, new))
    lb.program(new, "tb", "ns-b")  # the agent starts tb before its next sync
    assert programmed(lb, "tb") == lbmod.render(new, "tb")
    lb.sync(new, {"ta": "ns-a", "tb": "ns-b"})
    assert programmed(lb, "ta") == lbmod.render(new, "ta")
    assert programmed(lb, "ta")["10.0.0.2"] == ("10.0.0.11",)
