"""The controllers together, without agents: placement, scaling, restarts, removal."""

import copy

import pytest

from shoal.errors import InvalidArgument
from shoal.manager import Manager
from shoal.store import SQLiteStore


@pytest.fixture
def manager(tmp_path):
    m = Manager(SQLiteStore(tmp_path / "s.db"), "198.18.0.11:2377")
    for i in (1, 2, 3):
        m.dispatcher._register({"node_id": f"node{i}id", "hostname": f"node{i}",
                                "addr": f"198.18.0.{10 + i}"})
    m.settle()
    return m


def spec(name="web", replicas=6, networks=("appnet",)):
    return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "local",
                                                             "Args": ["sleep", "60"]},
                                           "Networks": [{"Target": n} for n in networks]},
            "Mode": {"Replicated": {"Replicas": replicas}}}


def live(m, service_id):
    return [t for t in m.store.list("task")
            if t["ServiceID"] == service_id and t["DesiredState"] == "running"]


def report(m, task, state, **extra):
    m.dispatcher._report(task["NodeID"], [{"id": task["ID"], "state": state, **extra}])
    m.settle()


def test_six_replicas_spread_two_per_node_each_with_an_address(manager):
    manager.control.create_network({"Name": "appnet", "Driver": "overlay"})
    svc = manager.control.create_service(spec())
    manager.settle()
    tasks = live(manager, svc["ID"])
    assert sorted(t["Slot"] for t in tasks) == [1, 2, 3, 4, 5, 6]
    per_node = {}
    for t in tasks:
        assert t["Status"]["State"] == "assigned"
        per_node[t["NodeID"]] = per_node.get(t["NodeID"], 0) + 1
    assert sorted(per_node.values()) == [2, 2, 2]
    addrs = {t["NetworksAttachments"][0]["Addresses"][0] for t in tasks}
    vip = svc["Endpoint"]["VirtualIPs"][0]["Addr"]
    assert len(addrs) == 6 and vip not in addrs
    assert all(a.startswith("10.0.1.") and a.endswith("/24") for a in addrs | {vip})


def test_scale_down_marks_highest_slots_for_removal_then_deletes_them(manager):
    manager.control.create_network({"Name": "appnet"})
    svc = manager.control.create_service(spec(replicas=6))
    manager.settle()
    fresh = manager.store.get("service", svc["ID"])
    manager.control.update_service("web", fresh["Version"]["Index"], spec(replicas=2))
    manager.settle()
    tasks = [t for t in manager.store.list("task") if t["ServiceID"] == svc["ID"]]
    going = [t for t in tasks if t["DesiredState"] == "remove"]
    assert sorted(t["Slot"] for t in going) == [3, 4, 5, 6]
    for t in going:
        report(manager, t, "shutdown")
    assert sorted(t["Slot"] for t in manager.store.list("task")) == [1, 2]


def test_a_failed_task_is_replaced_after_the_restart_delay(manager):
    manager.control.create_network({"Name": "appnet"})
    s = spec(replicas=1)
    s["TaskTemplate"]["RestartPolicy"] = {"Condition": "any", "Delay": 0}
    svc = manager.control.create_service(s)
    manager.settle()
    [task] = live(manager, svc["ID"])
    report(manager, task, "running")
    report(manager, task, "failed", exit_code=1)
    tasks = [t for t in manager.store.list("task") if t["ServiceID"] == svc["ID"]]
    old = manager.store.get("task", task["ID"])
    assert old["DesiredState"] == "shutdown" and old["Status"]["State"] == "failed"
    [new] = [t for t in tasks if t["DesiredState"] == "running"]
    assert new["Slot"] == 1 and new["ID"] != task["ID"]


def test_reports_never_move_a_task_backwards(manager):
    manager.control.create_network({"Name": "appnet"})
    svc = manager.control.create_service(spec(replicas=1))
    manager.settle()
    [task] = live(manager, svc["ID"])
    report(manager, task, "running")
    report(manager, task, "starting")
    assert manager.store.get("task", task["ID"])["Status"]["State"] == "running"


def test_rm_frees_the_vip_and_addresses(manager):
    manager.control.create_network({"Name": "appnet"})
    svc = manager.control.create_service(spec(replicas=2))
    manager.settle()
    pool = manager.allocator.pools[svc["Endpoint"]["VirtualIPs"][0]["NetworkID"]]
    assert len(pool.owners) == 1 + 1 + 2  # gateway, VIP, two tasks
    manager.control.remove_service("web")
    manager.settle()
    for t in manager.store.list("task"):
        report(manager, t, "shutdown")
    assert manager.store.list("task") == []
    assert list(pool.owners.values()) == ["gateway"]


def test_the_allocator_rebuilds_the_same_pools_after_a_restart(tmp_path, manager):
    manager.control.create_network({"Name": "appnet"})
    manager.control.create_service(spec(replicas=3))
    manager.settle()
    before = {k: dict(p.owners) for k, p in manager.allocator.pools.items()}
    again = Manager(manager.store, "198.18.0.11:2377")
    assert {k: dict(p.owners) for k, p in again.allocator.pools.items()} == before


def run_all(m, service_id):
    for t in live(m, service_id):
        if t["Status"]["State"] == "assigned":
            report(m, t, "running")


def test_update_rolls_one_slot_at_a_time_by_default(manager):
    manager.control.create_network({"Name": "appnet"})
    svc = manager.control.create_service(spec(replicas=3))
    manager.settle()
    run_all(manager, svc["ID"])
    s = copy.deepcopy(spec(replicas=3))
    s["TaskTemplate"]["ContainerSpec"]["Args"] = ["sleep", "61"]
    version = manager.store.get("service", svc["ID"])["Version"]["Index"]
    manager.control.update_service("web", version, s)
    manager.settle()
    for updated in (1, 2, 3):
        tasks = live(manager, svc["ID"])
        new = [t for t in tasks if t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "61"]]
        assert len(new) == updated and len(tasks) == 3  # one slot at a time
        for old in manager.store.list("task"):
            if old["DesiredState"] == "shutdown" and old["Status"]["State"] == "running":
                report(manager, old, "shutdown")
        run_all(manager, svc["ID"])
    assert all(t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "61"]
               for t in live(manager, svc["ID"]))


def test_start_first_keeps_the_old_task_until_the_new_one_runs(manager):
    manager.control.create_network({"Name": "appnet"})
    s = spec(replicas=1)
    s["UpdateConfig"] = {"Parallelism": 1, "Order": "start-first"}
    svc = manager.control.create_service(s)
    manager.settle()
    run_all(manager, svc["ID"])
    [old] = live(manager, svc["ID"])
    s = copy.deepcopy(s)
    s["TaskTemplate"]["ContainerSpec"]["Args"] = ["sleep", "61"]
    manager.control.update_service("web", manager.store.get("service", svc["ID"])["Version"][
        "Index"], s)
    manager.settle()
    assert len(live(manager, svc["ID"])) == 2  # both, until the new one runs
    run_all(manager, svc["ID"])
    [new] = live(manager, svc["ID"])
    assert new["ID"] != old["ID"]
    assert manager.store.get("task", old["ID"])["DesiredState"] == "shutdown"


def test_tasks_of_a_node_that_went_down_run_elsewhere(manager):
    manager.control.create_network({"Name": "appnet"})
    svc = manager.control.create_service(spec(replicas=3))
    manager.settle()
    run_all(manager, svc["ID"])
    manager.dispatcher._mark_down("node3id")
    manager.settle()
    tasks = live(manager, svc["ID"])
    assert len(tasks) == 3 and "node3id" not in {t["NodeID"] for t in tasks}


def test_global_service_runs_one_task_per_ready_node(manager):
    manager.control.create_network({"Name": "appnet"})
    s = spec()
    s["Mode"] = {"Global": {}}
    svc = manager.control.create_service(s)
    manager.settle()
    assert sorted(t["NodeID"] for t in live(manager, svc["ID"])) == [
        "node1id", "node2id", "node3id"]


# --- UpdateConfig: Delay, Monitor, FailureAction, UpdateStatus (manager/updates.py) ---


class FakeClock:
    """Stands in for the orchestrator's `time` module: wall time moves only when told."""

    def __init__(self):
        import time as real
        self.real, self.offset = real, 0.0

    def time(self):
        return self.real.time() + self.offset

    def monotonic(self):
        return self.real.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch):
    import shoal.manager.orchestrator as orchestrator
    fake = FakeClock()
    monkeypatch.setattr(orchestrator, "time", fake)
    return fake


def start_update(manager, replicas, update_config, args=("sleep", "61")):
    manager.control.create_network({"Name": "appnet"})
    s = spec(replicas=replicas)
    s["UpdateConfig"] = update_config
    svc = manager.control.create_service(s)
    manager.settle()
    run_all(manager, svc["ID"])
    s = copy.deepcopy(s)
    s["TaskTemplate"]["ContainerSpec"]["Args"] = list(args)
    manager.control.update_service("web", manager.store.get("service", svc["ID"])[
        "Version"]["Index"], s)
    manager.settle()
    return svc["ID"]


def stop_old(manager):
    for old in manager.store.list("task"):
        if old["DesiredState"] == "shutdown" and old["Status"]["State"] == "running":
            report(manager, old, "shutdown")


def updated(manager, service_id, args=("sleep", "61")):
    return [t for t in live(manager, service_id)
            if t["Spec"]["ContainerSpec"]["Args"] == list(args)]


def test_update_waits_delay_between_batches_then_completes_after_monitor(manager, clock):
    sid = start_update(manager, 2, {"Parallelism": 1, "Delay": 10_000_000_000,
                                    "Monitor": 2_000_000_000})
    assert manager.store.get("service", sid)["UpdateStatus"]["State"] == "updating"
    stop_old(manager)
    run_all(manager, sid)
    assert len(updated(manager, sid)) == 1
    clock.offset += 5
    manager.settle()
    assert len(updated(manager, sid)) == 1  # 5 s into a 10 s delay: the next batch waits
    clock.offset += 6
    manager.settle()
    assert len(updated(manager, sid)) == 2
    clock.offset = 0  # back to the clock the task reports are stamped with
    stop_old(manager)
    run_all(manager, sid)
    assert manager.store.get("service", sid)["UpdateStatus"]["State"] == "updating"
    clock.offset = 3  # past Monitor with every new task running
    manager.settle()
    status = manager.store.get("service", sid)["UpdateStatus"]
    assert status["State"] == "completed" and status["CompletedAt"]


def test_a_failing_update_pauses_by_default(manager, clock):
    sid = start_update(manager, 3, {"Parallelism": 1})
    stop_old(manager)
    [new] = [t for t in updated(manager, sid) if t["Status"]["State"] == "assigned"]
    report(manager, new, "failed", exit_code=1, err="boom")
    clock.offset += 30
    manager.settle()
    status = manager.store.get("service", sid)["UpdateStatus"]
    assert status["State"] == "paused" and new["ID"] in status["Message"]
    assert sum(1 for t in live(manager, sid)
               if t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "60"]) == 2  # the rest wait


def test_failure_action_rollback_restores_the_previous_tasks(manager, clock):
    sid = start_update(manager, 2, {"Parallelism": 1, "FailureAction": "rollback"})
    stop_old(manager)
    [new] = [t for t in updated(manager, sid) if t["Status"]["State"] == "assigned"]
    report(manager, new, "failed", exit_code=1)
    svc = manager.store.get("service", sid)
    assert svc["UpdateStatus"]["State"] == "rollback_started"
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "60"]
    for _ in range(3):
        stop_old(manager)
        run_all(manager, sid)
    clock.offset += 10
    manager.settle()
    assert manager.store.get("service", sid)["UpdateStatus"]["State"] == "rollback_completed"
    assert all(t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "60"] for t in live(manager, sid))


def test_rollback_previous_goes_back_to_the_previous_spec(manager):
    sid = start_update(manager, 1, {})
    version = manager.store.get("service", sid)["Version"]["Index"]
    manager.control.update_service("web", version, None, rollback=True)
    svc = manager.store.get("service", sid)
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "60"]
    assert svc["UpdateStatus"]["State"] == "rollback_started"
    fresh = manager.control.create_service({**spec(name="solo", replicas=1)})
    with pytest.raises(InvalidArgument, match="no previous spec"):
        manager.control.update_service("solo", fresh["Version"]["Index"], None, rollback=True)
