"""The dataplane in real namespaces: two "nodes" joined by a veth underlay (198.18.200.0/24, no
route out), each running `python -m shoal.dataplane` in its network namespace the way the agent
runs, and real TCP between task namespaces over the VXLAN overlay.

Everything made here is named shoal-dptest-* and removed after each test, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.dataplane import namespaces
from shoal.model.view import NodeView, mac_for

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "shoal-dptest-"
NODES = {"n1": ("shoal-dptest-n1", "198.18.200.1"), "n2": ("shoal-dptest-n2", "198.18.200.2")}
NETS = {
    "neta": {"id": "neta", "name": "a", "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
             "vni": 4200, "internal": False, "encrypted": False},
    "netb": {"id": "netb", "name": "b", "subnet": "10.0.2.0/24", "gateway": "10.0.2.1",
             "vni": 4201, "internal": False, "encrypted": False},
}
PORT = 8080
PAYLOAD = 256 * 1024  # many full-size segments: a wrong overlay MTU would stall the transfer

SERVER = f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(16)
s.settimeout(20)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
    except TimeoutError:
        break
    c.sendall(sys.argv[1].encode().ljust({PAYLOAD}, b"."))
    c.close()
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
data = b""
while chunk := s.recv(65536):
    data += chunk
print(len(data), data.split(b".")[0].decode())
"""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def tid(n: int) -> str:
    """A 25-char task id like Docker's; the first 8 and 12 chars are unique."""
    return f"t{n:03d}x".ljust(25, "0")


TASKS: dict[str, tuple[str, dict[str, str]]] = {  # task id -> (node, network -> ip)
    tid(1): ("n1", {"neta": "10.0.1.3"}),
    tid(3): ("n1", {"neta": "10.0.1.5"}),
    tid(5): ("n1", {"netb": "10.0.2.5"}),
    tid(2): ("n2", {"neta": "10.0.1.4"}),
    tid(4): ("n2", {"netb": "10.0.2.4"}),
}


def attachment(ip: str) -> dict[str, Any]:
    return {"ip": ip, "prefixlen": 24, "mac": mac_for(ip)}


def task_entry(task_id: str, addrs: dict[str, str]) -> dict[str, Any]:
    return {"id": task_id, "name": f"svc.{task_id[1:4]}", "service_id": "svc",
            "service_name": "svc", "slot": 1, "desired_state": "running", "image": "none",
            "command": ["true"], "env": [], "dir": "",
            "addrs": {net: attachment(ip) for net, ip in addrs.items()}}


def view_for(node_id: str, tasks: dict[str, tuple[str, dict[str, str]]]) -> NodeView:
    """What the manager would send: only the networks this node has tasks on."""
    mine = {t: a for t, (n, a) in tasks.items() if n == node_id}
    nets = {net for addrs in mine.values() for net in addrs}
    peers = {n: {"id": n, "name": n, "addr": addr} for n, (_, addr) in NODES.items()}
    endpoints = {
        t: {"id": t, "name": t, "service_id": "svc", "node_id": n, "state": "running",
            "healthy": True,
            "addrs": {net: attachment(ip) for net, ip in addrs.items() if net in nets}}
        for t, (n, addrs) in tasks.items() if set(addrs) & nets
    }
    return {"node": peers[node_id], "revision": 1, "networks": {n: NETS[n] for n in nets},
            "peers": peers, "services": {}, "endpoints": endpoints,
            "tasks": {t: task_entry(t, a) for t, a in mine.items()}}  # type: ignore[typeddict-item]


class Node:
    """A Dataplane in a node namespace, driven over JSON lines, as the agent would hold it."""

    def __init__(self, node_id: str, launcher: str = "nsenter") -> None:
        self.node_id = node_id
        self.netns, self.addr = NODES[node_id]
        enter = (["nsenter", f"--net=/run/netns/{self.netns}"] if launcher == "nsenter"
                 else ["ip", "netns", "exec", self.netns])
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [*enter, sys.executable, "-m", "shoal.dataplane", "--node-id", node_id,
             "--underlay", self.addr, "--ns-prefix", PREFIX],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, f"dataplane on {self.node_id} did not answer"
        line = self.proc.stdout.readline()
        assert line, f"dataplane on {self.node_id} exited ({self.proc.poll()})"
        return json.loads(line)

    def request(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        reply = self.request(op, **kwargs)
        assert reply["ok"], f"{op} on {self.node_id}: {reply['error']}"
        return reply

    def view(self, tasks: dict[str, tuple[str, dict[str, str]]] = TASKS) -> NodeView:
        return view_for(self.node_id, tasks)

    def up(self, tasks: dict[str, tuple[str, dict[str, str]]] = TASKS) -> list[dict[str, Any]]:
        """sync, then attach every task of this node; the replies of the attaches."""
        view = self.view(tasks)
        self.call("sync", view=view)
        return [self.call("attach", task=t, view=view) for t in view["tasks"].values()]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def ours() -> list[str]:
    return namespaces.names(PREFIX)


def cleanup() -> None:
    """Remove every shoal-dptest-* namespace and the processes we started in them."""
    for name in ours():
        pids = run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        namespaces.remove(name)


@pytest.fixture
def nodes() -> Iterator[dict[str, Node]]:
    cleanup()
    made: dict[str, Node] = {}
    try:
        (ns1, a1), (ns2, a2) = NODES.values()
        for ns in (ns1, ns2):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", "ul0", "netns", ns1, "type", "veth", "peer", "name", "ul0",
            "netns", ns2)
        for ns, addr in ((ns1, a1), (ns2, a2)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "ul0")
            run("ip", "-n", ns, "link", "set", "ul0", "up")
        for node_id in NODES:
            made[node_id] = Node(node_id)
            assert made[node_id].hello["ok"], made[node_id].hello
        yield made
    finally:
        for node in made.values():
            node.close()
        cleanup()
    assert ours() == []


class Servers:
    """One-shot TCP servers in task namespaces; killed at the end of the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, task_id: str) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", PREFIX + task_id[:12], sys.executable, "-c", SERVER,
             task_id[:4]], stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.stop()


def reach(src: str, ip: str, timeout: float = 3.0) -> str | None:
    """'<bytes> <server name>' if a TCP client in task src gets the server's payload."""
    res = run("ip", "netns", "exec", PREFIX + src[:12], sys.executable, "-c", CLIENT, ip,
              str(PORT), str(timeout), check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def node_state(node: Node) -> str:
    """The node namespace's devices, FDB and neighbours as `ip` and `bridge` show them (the
    bridge's running timers left out)."""
    ns = node.netns
    links = re.sub(r"\w*_timer\s+[\d.]+", "", run("ip", "-n", ns, "-d", "link", "show").stdout)
    parts = [links,
             run("bridge", "-n", ns, "fdb", "show").stdout,
             run("ip", "-n", ns, "neigh", "show").stdout]
    return "\n".join(parts)


def test_overlay_carries_tcp_between_nodes_and_isolates_networks(
        nodes: dict[str, Node], servers: Servers) -> None:
    n1, n2 = nodes["n1"], nodes["n2"]
    n1.up()
    n2.up()
    for t in (tid(1), tid(2), tid(3), tid(4)):
        servers.start(t)

    # across nodes over VXLAN, both ways, with full-size segments
    assert reach(tid(1), "10.0.1.4") == f"{PAYLOAD} t002"
    assert reach(tid(2), "10.0.1.3") == f"{PAYLOAD} t001"
    # two tasks on one node's bridge
    assert reach(tid(1), "10.0.1.5") == f"{PAYLOAD} t003"
    assert reach(tid(3), "10.0.1.3") == f"{PAYLOAD} t001"
    # network B works across nodes too
    assert reach(tid(5), "10.0.2.4") == f"{PAYLOAD} t004"
    # the remote MAC came from the VXLAN device's ARP proxy
    neigh = run("ip", "-n", PREFIX + tid(1)[:12], "neigh", "show", "10.0.1.4").stdout
    assert mac_for("10.0.1.4") in neigh

    # L2 isolation: give network B's tasks a route into A's subnet; A's tasks stay unreachable
    for t in (tid(4), tid(5)):
        run("ip", "-n", PREFIX + t[:12], "route", "add", "10.0.1.0/24", "dev", "eth0")
    assert reach(tid(5), "10.0.1.3", timeout=1.5) is None  # A on the same node
    assert reach(tid(5), "10.0.1.4", timeout=1.5) is None  # A on the other node
    assert reach(tid(4), "10.0.1.4", timeout=1.5) is None


def test_sync_twice_is_a_no_op_and_drift_is_repaired(
        nodes: dict[str, Node], servers: Servers) -> None:
    n1, n2 = nodes["n1"], nodes["n2"]
    n1.up()
    n2.up()
    before = node_state(n1)
    assert n1.call("sync", view=n1.view())["changes"] == 0
    assert all(r["changes"] == 0 for r in n1.up())
    assert node_state(n1) == before

    # an agent restarted over existing devices and namespaces finds nothing to do
    n1.close()
    nodes["n1"] = n1 = Node("n1")
    assert n1.call("sync", view=n1.view())["changes"] == 0
    assert all(r["changes"] == 0 for r in n1.up())

    # drift: entries deleted, the VXLAN device down, an address gone, half a veth pair gone
    ns, t1ns = n1.netns, PREFIX + tid(1)[:12]
    run("bridge", "-n", ns, "fdb", "del", mac_for("10.0.1.4"), "dev", "shvx4200", "dst",
        "198.18.200.2", "self")
    run("ip", "-n", ns, "neigh", "del", "10.0.1.4", "dev", "shvx4200")
    # (a device going down flushes even its permanent neighbour entries: the stray one after)
    run("ip", "-n", ns, "link", "set", "shvx4200", "down")
    run("ip", "-n", ns, "neigh", "add", "10.0.1.99", "lladdr", "02:42:0a:00:01:63", "dev",
        "shvx4200", "nud", "permanent")
    run("ip", "-n", t1ns, "addr", "flush", "dev", "eth0")
    run("ip", "-n", ns, "link", "del", "shv" + tid(3)[:8] + "0")
    assert n1.call("sync", view=n1.view(), force=True)["changes"] == 4
    assert sum(r["changes"] for r in n1.up()) >= 3
    assert n1.call("sync", view=n1.view())["changes"] == 0
    assert all(r["changes"] == 0 for r in n1.up())

    fdb = run("bridge", "-n", ns, "fdb", "show", "dev", "shvx4200").stdout
    assert f"{mac_for('10.0.1.4')} dst 198.18.200.2 self permanent" in fdb
    neigh = run("ip", "-n", ns, "neigh", "show", "dev", "shvx4200").stdout
    assert "10.0.1.4 lladdr 02:42:0a:00:01:04 PERMANENT" in neigh and "10.0.1.99" not in neigh
    assert "master shbr4200" in run("ip", "-n", ns, "link", "show", "shv" + tid(3)[:8] + "0").stdout
    for t in (tid(2), tid(3)):
        servers.start(t)
    assert reach(tid(1), "10.0.1.4") == f"{PAYLOAD} t002"
    assert reach(tid(1), "10.0.1.5") == f"{PAYLOAD} t003"


def test_removal_detach_and_teardown(nodes: dict[str, Node]) -> None:
    n1, n2 = nodes["n1"], nodes["n2"]
    n1.up()
    n2.up()
    # both nodes share one prefix; each lists only its own task namespaces
    assert n1.call("task_namespaces")["result"] == sorted(t[:12] for t in (tid(1), tid(3), tid(5)))
    assert n2.call("task_namespaces")["result"] == sorted(t[:12] for t in (tid(2), tid(4)))

    # a task on a network this node has no devices for is refused with a clear message
    stray = task_entry(tid(9), {"netb": "10.0.2.9"})
    reply = n1.request("attach", task=stray, view=n1.view({tid(1): TASKS[tid(1)]}))
    assert not reply["ok"] and "sync" in reply["error"] and reply["kind"] == "KernelError"

    # network B leaves node 1: its devices and entries go
    n1.call("detach", task_id=tid(5))
    rest = {t: v for t, v in TASKS.items() if t != tid(5)}
    n1.call("sync", view=n1.view(rest))
    links = run("ip", "-n", n1.netns, "link", "show").stdout
    assert "shbr4201" not in links and "shvx4201" not in links
    assert "shbr4200" in links and "shvx4200" in links
    assert not os.path.exists(f"/run/netns/{PREFIX}{tid(5)[:12]}")
    assert "shv" + tid(5)[:8] not in links

    # detach removes the namespace and the veth; twice is fine
    n1.call("detach", task_id=tid(1))
    n1.call("detach", task_id=tid(1))
    assert not os.path.exists(f"/run/netns/{PREFIX}{tid(1)[:12]}")
    assert "shv" + tid(1)[:8] not in run("ip", "-n", n1.netns, "link", "show").stdout
    assert n1.call("task_namespaces")["result"] == [tid(3)[:12]]

    # teardown removes this node's things only
    n1.call("teardown")
    links = run("ip", "-n", n1.netns, "-br", "link", "show").stdout
    assert "shbr" not in links and "shvx" not in links and "shv" not in links
    assert n1.call("task_namespaces")["result"] == []
    assert sorted(ours()) == sorted([n1.netns, n2.netns, PREFIX + tid(2)[:12],
                                     PREFIX + tid(4)[:12]])
    n2.call("teardown")
    assert sorted(ours()) == sorted([n1.netns, n2.netns])
    assert "shbr" not in run("ip", "-n", n2.netns, "-br", "link", "show").stdout
    n1.call("teardown")  # nothing left to do: no error


def test_ten_attaches_are_fast(nodes: dict[str, Node]) -> None:
    n1 = nodes["n1"]
    tasks = {tid(100 + i): ("n1", {"neta": f"10.0.1.{100 + i}"}) for i in range(10)}
    view = n1.view(tasks)
    n1.call("sync", view=view)
    start = time.perf_counter()
    replies = [n1.call("attach", task=t, view=view) for t in view["tasks"].values()]
    wall = time.perf_counter() - start
    inside = sum(r["seconds"] for r in replies)
    again = sum(n1.call("attach", task=t, view=view)["seconds"] for t in view["tasks"].values())
    print(f"\n10 attaches: {inside * 1000:.1f} ms in the dataplane, {wall * 1000:.1f} ms "
          f"with the JSON round trips; 10 no-op re-attaches: {again * 1000:.1f} ms")
    assert inside < 1.0
    assert len(n1.call("task_namespaces")["result"]) == 10


def test_refuses_to_run_under_ip_netns_exec(nodes: dict[str, Node]) -> None:
    node = Node("n1", launcher="ip-netns-exec")
    try:
        assert not node.hello["ok"]
        assert node.hello["kind"] == "Unavailable" and "nsenter --net" in node.hello["error"]
    finally:
        node.close()
