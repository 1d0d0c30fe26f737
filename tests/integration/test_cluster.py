"""The foundation, end to end in a real 3-node lab: placement, reachability over the overlay,
scaling, restarts, a manager restart, and the shoal CLI that drives it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from shoal.client import Client
from shoal.lab import start_manager, stop_manager

SHOAL = [sys.executable, "-m", "shoal"]


def shoal(lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*SHOAL, "--host", lab.docker_host, *args], capture_output=True,
                         text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed: {out.stderr}")
    return out


def tasks_of(client: Client, service: str, desired: str = "running") -> list[dict]:
    return client.get("/tasks", filters=json.dumps({"service": [service],
                                                     "desired-state": [desired]}))


def wait_for(what: str, test, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = test()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def running(client: Client, service: str, count: int) -> list[dict] | None:
    tasks = tasks_of(client, service)
    up = [t for t in tasks if t["Status"]["State"] == "running"]
    return up if len(up) == count == len(tasks) else None


def addr(task: dict) -> str:
    return task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]


def netns(task: dict) -> str:
    return task["Status"]["ContainerStatus"]["ContainerID"]


def in_task(task: dict, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns(task), *argv], capture_output=True,
                          text=True, timeout=timeout)


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links(node_netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", node_netns, "-o", "link", "show"], capture_output=True,
                         text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


CONNECT_ALL = """
import socket, sys
bad = []
for a in sys.argv[1:]:
    try:
        socket.create_connection((a, 80), timeout=3).close()
    except OSError as e:
        bad.append(f"{a}: {e}")
print("\\n".join(bad) or "ok")
"""


@pytest.fixture
def client(lab):
    return Client(lab.docker_host)


@pytest.fixture
def appnet(lab, client):
    name = "appnet"
    shoal(lab, "network", "create", "-d", "overlay", name)
    yield name
    for svc in client.get("/services"):
        client.request("DELETE", f"/services/{svc['ID']}")
    wait_for("tasks gone", lambda: not client.get("/tasks"), timeout=30)
    client.request("DELETE", f"/networks/{name}")


def test_six_replicas_land_two_per_node_and_all_reach_each_other(lab, client, appnet):
    shoal(lab, "service", "create", "--name", "web", "--replicas", "6", "--network", appnet,
          "--", "python3", "-m", "http.server", "80")
    tasks = wait_for("6 running", lambda: running(client, "web", 6))
    assert sorted(Counter(t["NodeID"] for t in tasks).values()) == [2, 2, 2]
    addrs = [addr(t) for t in tasks]
    for task in tasks:
        others = [a for a in addrs if a != addr(task)]
        # Servers may still be binding right after "running": allow a moment.
        result = wait_for(f"{addr(task)} reaching all", lambda t=task, o=others: (
            lambda r: r if r.stdout.strip() == "ok" else None)(
                in_task(t, "python3", "-c", CONNECT_ALL, *o)), timeout=15, every=0.3)
        assert result.stdout.strip() == "ok"
    # And as a user would: shoal exec by task name, curl to a task on another node.
    first = next(t for t in tasks if t["Slot"] == 1)
    other = next(t for t in tasks if t["NodeID"] != first["NodeID"])
    out = shoal(lab, "exec", "web.1", "--", "curl", "-s", "-o", "/dev/null", "-w",
                "%{http_code}", f"http://{addr(other)}/")
    assert out.stdout == "200"


def test_scale_converges_and_removed_tasks_leave_nothing(lab, client, appnet):
    shoal(lab, "service", "create", "--name", "web", "--replicas", "6", "--network", appnet,
          "--", "python3", "-m", "http.server", "80")
    six = wait_for("6 running", lambda: running(client, "web", 6))
    vni = client.find("network", appnet)["Options"][
        "com.docker.network.driver.overlay.vxlanid_list"]

    shoal(lab, "service", "scale", "web=2")
    two = wait_for("2 running", lambda: running(client, "web", 2))
    assert sorted(t["Slot"] for t in two) == [1, 2]
    gone = [t for t in six if t["ID"] not in {x["ID"] for x in two}]
    wait_for("namespaces of removed tasks gone",
             lambda: not ({netns(t) for t in gone} & netns_names()))
    # A node with no task left on appnet drops its copy of the network.
    busy = {t["NodeID"] for t in two}
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
    for node in lab.nodes:
        node_id = next(i for i, h in nodes.items() if h == node.name)
        has = f"shvx{vni}" in links(node.netns)
        if node_id in busy:
            assert has, f"{node.name} runs a task but has no shvx{vni}"
        else:
            wait_for(f"{node.name} to drop shvx{vni}",
                     lambda n=node: f"shvx{vni}" not in links(n.netns))
        # No veth of a removed task is left on the node.
        assert not any(f"shv{t['ID'][:8]}" in name for t in gone for name in links(node.netns))

    shoal(lab, "service", "scale", "web=5")
    five = wait_for("5 running", lambda: running(client, "web", 5))
    assert sorted(t["Slot"] for t in five) == [1, 2, 3, 4, 5]
    assert sorted(Counter(t["NodeID"] for t in five).values()) == [1, 2, 2]


def test_killed_task_is_replaced_and_rm_cleans_up(lab, client, appnet):
    shoal(lab, "service", "create", "--name", "web", "--replicas", "2", "--restart-delay", "0.2",
          "--network", appnet, "--", "python3", "-m", "http.server", "80")
    tasks = wait_for("2 running", lambda: running(client, "web", 2))
    victim = next(t for t in tasks if t["Slot"] == 1)
    os.kill(victim["Status"]["ContainerStatus"]["PID"], 9)
    new = wait_for("slot 1 replaced", lambda: [
        t for t in running(client, "web", 2) or [] if t["Slot"] == 1
        and t["ID"] != victim["ID"]])
    assert new[0]["Status"]["State"] == "running"
    old = client.find("task", victim["ID"])
    assert old["Status"]["State"] == "failed" and old["DesiredState"] == "shutdown"
    assert old["Status"]["ContainerStatus"]["ExitCode"] == 137
    wait_for("failed task's namespace gone", lambda: netns(victim) not in netns_names())

    live = running(client, "web", 2)
    shoal(lab, "service", "rm", "web")
    wait_for("all tasks deleted", lambda: not client.get("/tasks"))
    wait_for("namespaces gone", lambda: not ({netns(t) for t in live} & netns_names()))


def test_manager_restart_loses_nothing_and_tasks_keep_running(lab, client, appnet):
    shoal(lab, "service", "create", "--name", "web", "--replicas", "3", "--network", appnet,
          "--", "python3", "-m", "http.server", "80")
    before = wait_for("3 running", lambda: running(client, "web", 3))
    services = client.get("/services")
    networks = client.get("/networks")
    stop_manager(lab)
    start_manager(lab)
    wait_for("manager back", lambda: _answers(client))
    assert client.get("/services") == services
    assert client.get("/networks") == networks
    wait_for("nodes ready", lambda: all(n["Status"]["State"] == "ready"
                                        for n in client.get("/nodes")))
    after = running(client, "web", 3)
    assert after is not None
    assert {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in after} == \
        {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in before}
    for t in after:
        os.kill(t["Status"]["ContainerStatus"]["PID"], 0)  # still alive


def _answers(client: Client) -> bool:
    try:
        return client.request("GET", "/_ping", raw=True) == b"OK"
    except Exception:
        return False


def test_service_without_a_command_fails_with_a_message(lab, client, appnet):
    out = client.request("POST", "/services/create", {
        "Name": "nocmd", "TaskTemplate": {"ContainerSpec": {"Image": "python:3"},
                                          "Networks": [{"Target": appnet}]}})
    assert out["ID"]
    task = wait_for("a failed task", lambda: [
        t for t in client.get("/tasks") if t["Status"]["State"] == "failed"])[0]
    assert "no command" in task["Status"]["Err"]


def test_logs_keep_each_tasks_output(lab, client, appnet):
    shoal(lab, "service", "create", "--name", "talker", "--replicas", "2", "--network", appnet,
          "--", "sh", "-c", "echo hello from $SHOAL_TASK_NAME; exec sleep 600")
    wait_for("2 running", lambda: running(client, "talker", 2))
    out = wait_for("both lines", lambda: (lambda o: o if o.count("hello from") == 2 else None)(
        shoal(lab, "service", "logs", "talker").stdout))
    assert "hello from talker.1" in out and "hello from talker.2" in out


def test_node_ls_shows_three_ready_nodes_one_leader(lab):
    out = json.loads(shoal(lab, "node", "ls", "--format", "json").stdout)
    assert sorted(n["Description"]["Hostname"] for n in out) == ["node1", "node2", "node3"]
    assert all(n["Status"]["State"] == "ready" for n in out)
    assert [n["Description"]["Hostname"] for n in out
            if n.get("ManagerStatus", {}).get("Leader")] == ["node1"]


def test_bad_cli_input_is_refused_with_a_message(lab, client, appnet):
    out = shoal(lab, "service", "create", "--name", "x", "--network", "nosuch", "--",
                "true", check=False)
    assert out.returncode == 1 and "network nosuch not found" in out.stderr
    out = shoal(lab, "network", "create", "bad/name", check=False)
    assert out.returncode == 1 and "invalid network name" in out.stderr
    out = shoal(lab, "exec", "nosuch.1", "--", "true", check=False)
    assert out.returncode == 1 and "nosuch.1" in out.stderr
    assert client.get("/services") == []


def test_tasks_of_a_node_that_goes_down_move_to_the_others(lab, client, appnet):
    from shoal.lab import start_agent, stop_agent

    shoal(lab, "service", "create", "--name", "web", "--replicas", "3", "--network", appnet,
          "--", "python3", "-m", "http.server", "80")
    wait_for("3 running", lambda: running(client, "web", 3))
    nodes = {n["Description"]["Hostname"]: n["ID"] for n in client.get("/nodes")}
    stop_agent(lab, "node3")
    try:
        moved = wait_for("tasks moved off node3", lambda: (
            lambda ts: ts if ts and nodes["node3"] not in {t["NodeID"] for t in ts} else None)(
                running(client, "web", 3)), timeout=30)
        assert sorted(Counter(t["NodeID"] for t in moved).values()) == [1, 2]
        assert client.find("node", "node3")["Status"]["State"] == "down"
    finally:
        start_agent(lab, "node3")
        wait_for("node3 back", lambda: client.find("node", "node3")["Status"]["State"] == "ready")
