"""Isolation in a real lab, with real packets: networks cannot reach each other (same node and
across nodes, also by routing through the node or over the ingress network), a task on two
networks reaches both, tasks go out to the ext host through their node's gateway and get the
replies, `--internal` networks have no way out, and from outside only published ports answer:
not task addresses, not the manager's port, not VXLAN (an injected packet reaches no task).

One set of services serves every test of this module (built once: tasks are slow to start).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shoal.client import Client
from tests.integration.test_cluster import (
    addr,
    in_task,
    netns,
    netns_names,
    running,
    shoal,
    wait_for,
)
from tests.integration.test_lb import WHOAMI

FRONT, BACK, PRIV = "isofront", "isoback", "isopriv"
PUBLISHED, UNPUBLISHED = 8085, 8099
GATEWAY = "172.18.0.1"

# TCP connects in parallel: {"host:port": "ok" | the error's name}.
CONNECT = """
import concurrent.futures as cf, json, socket, sys
def one(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=float(sys.argv[1])).close()
        return "ok"
    except OSError as e:
        return type(e).__name__
with cf.ThreadPoolExecutor(32) as ex:
    print(json.dumps(dict(zip(sys.argv[2:], ex.map(one, sys.argv[2:])))))
"""

# The outside world's web server: answers with the address it saw the client come from.
EXT_WHOAMI = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

# Waits for one UDP datagram; prints it and its sender, or "nothing".
UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    data, peer = s.recvfrom(2048)
    print(data.decode(), peer[0], flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""

# A VXLAN packet as a peer node would send it: VXLAN header, then an Ethernet frame to the
# task's MAC carrying UDP to the task's address. Sent from an ordinary UDP socket.
VXLAN_INJECT = """
import socket, struct, sys
node, vni, dmac, src, dst, port, payload = sys.argv[1:8]
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload.encode()
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex("02420a00fffe") + b"\\x08\\x00"
packet = struct.pack("!II", 0x08000000, int(vni) << 8) + frame + ip + udp
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(packet, (node, 4789))
"""


def run_in(netns_name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns_name, *argv], capture_output=True,
                          text=True, timeout=timeout)


def connect(where: str, targets: list[str], timeout: float = 1.5) -> dict[str, str]:
    out = run_in(where, sys.executable, "-c", CONNECT, str(timeout), *targets, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def on(ip: str, port: int = 80) -> str:
    return f"{ip}:{port}"


def addr_on(task: dict, network_id: str) -> str:
    return next(a["Addresses"][0].split("/")[0] for a in task["NetworksAttachments"]
                if a["Network"]["ID"] == network_id)


class World:
    """The services of this module and what the tests look up about them."""

    def __init__(self, lab, client: Client) -> None:
        self.lab, self.client = lab, client
        self.net = {name: client.find("network", name)["Id"] for name in (FRONT, BACK, PRIV)}
        self.ingress = next(n["Id"] for n in client.get("/networks") if n.get("Ingress"))
        self.vni = {name: int(client.find("network", name)["Options"][
            "com.docker.network.driver.overlay.vxlanid_list"]) for name in (FRONT, BACK)}
        hosts = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
        self.node_of = lambda task: lab.node(hosts[task["NodeID"]])
        self.tasks: dict[str, list[dict]] = {}

    def wait(self, name: str, count: int) -> list[dict]:
        self.tasks[name] = wait_for(name, lambda: running(self.client, name, count), timeout=60)
        return self.tasks[name]


def _service(client: Client, name: str, replicas: int, networks: list[str],
             port: int | None = None) -> None:
    spec: dict = {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": "local", "Args": ["python3", "-c", WHOAMI]},
                         "Networks": [{"Target": n} for n in networks]},
        "Mode": {"Replicated": {"Replicas": replicas}}}
    if port:
        spec["EndpointSpec"] = {"Ports": [{"TargetPort": 80, "PublishedPort": port}]}
    client.request("POST", "/services/create", spec)


SERVICES = {  # name -> (replicas, networks, published port)
    "fa": (3, [FRONT], None), "fb": (3, [BACK], None), "both": (1, [FRONT, BACK], None),
    "priv": (1, [PRIV], None), "pub": (1, [BACK], PUBLISHED), "pubf": (1, [FRONT], 8086),
}


@pytest.fixture(scope="module")
def world(lab) -> Iterator[World]:
    client = Client(lab.docker_host)
    made: list[str] = []
    try:
        for name in (FRONT, BACK):
            shoal(lab, "network", "create", "-d", "overlay", name)
            made.append(name)
        shoal(lab, "network", "create", "-d", "overlay", "--internal", PRIV)
        made.append(PRIV)
        for name, (replicas, networks, port) in SERVICES.items():
            _service(client, name, replicas, networks, port)
        w = World(lab, client)
        for name, (replicas, _, _) in SERVICES.items():
            w.wait(name, replicas)
        # Every web server listens before any test judges a failure.
        probe = w.tasks["both"][0]
        ready = [on(addr(t)) for t in w.tasks["fa"]]
        wait_for("servers listening", lambda: set(connect(netns(probe), ready).values()) == {"ok"},
                 timeout=20, every=0.3)
        yield w
    finally:
        ours = {s["ID"] for s in client.get("/services") if s["Spec"]["Name"] in SERVICES}
        spaces = {netns(t) for t in client.get("/tasks") if t["ServiceID"] in ours
                  and t["Status"].get("ContainerStatus", {}).get("ContainerID")}
        for svc_id in ours:
            client.request("DELETE", f"/services/{svc_id}")
        wait_for("tasks gone", lambda: not [t for t in client.get("/tasks")
                                            if t["ServiceID"] in ours], timeout=30)
        # The agents remove the namespaces last; the kernel destroys them a moment later.
        # Let both finish, so the next test does not race a busy namespace cleanup.
        wait_for("namespaces gone", lambda: not spaces & netns_names(), timeout=30)
        time.sleep(1)
        for name in made:
            client.request("DELETE", f"/networks/{name}")


def test_networks_cannot_reach_each_other_on_one_node_or_across(world: World) -> None:
    fa, fb = world.tasks["fa"], world.tasks["fb"]
    pairs = [(a, b) for a in fa for b in fb]
    assert any(a["NodeID"] == b["NodeID"] for a, b in pairs)  # same node ...
    assert any(a["NodeID"] != b["NodeID"] for a, b in pairs)  # ... and across nodes
    for a in fa:
        # the positive control: its own network, every node
        assert set(connect(netns(a), [on(addr(t)) for t in fa if t is not a]).values()) == {"ok"}
        result = connect(netns(a), [on(addr(b)) for b in fb])
        assert "ok" not in result.values(), result
    # Not by routing through the node either: send the other network's subnet, and the
    # ingress network's, to the gateway; the node forwards none of it.
    a = fa[0]
    for subnet in ("10.0.0.0/8", "10.255.0.0/16"):
        assert in_task(a, "ip", "route", "replace", subnet, "via", GATEWAY).returncode == 0
    try:
        targets = [on(addr(b)) for b in fb] + [on(addr_on(world.tasks["pub"][0], world.ingress))]
        result = connect(netns(a), targets)
        assert "ok" not in result.values(), result
    finally:
        for subnet in ("10.0.0.0/8", "10.255.0.0/16"):
            in_task(a, "ip", "route", "del", subnet)


def test_a_task_on_two_networks_reaches_both(world: World) -> None:
    both = world.tasks["both"][0]
    targets = [on(addr(t)) for t in world.tasks["fa"] + world.tasks["fb"]]
    assert set(connect(netns(both), targets).values()) == {"ok"}
    # and each side reaches it on its own network
    for name, net in (("fa", FRONT), ("fb", BACK)):
        for t in world.tasks[name]:
            target = on(addr_on(both, world.net[net]))
            assert connect(netns(t), [target]) == {target: "ok"}


def test_published_services_do_not_meet_on_the_ingress_network(world: World) -> None:
    pub, pubf = world.tasks["pub"][0], world.tasks["pubf"][0]
    ingress = world.ingress
    # Publishing put both on ingress, from different networks: no packet between them there.
    assert connect(netns(pubf), [on(addr_on(pub, ingress))])[on(addr_on(pub, ingress))] != "ok"
    assert connect(netns(pub), [on(addr_on(pubf, ingress))])[on(addr_on(pubf, ingress))] != "ok"
    # The published port itself, through any node's address, is open to anyone, tasks too.
    targets = [on(n.addr, PUBLISHED) for n in world.lab.nodes]
    assert set(connect(netns(pubf), targets).values()) == {"ok"}


@pytest.fixture
def ext_server(lab) -> Iterator[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ext_netns, sys.executable, "-c",
                             EXT_WHOAMI, lab.ext_addr, "8000"])
    try:
        url = f"http://{lab.ext_addr}:8000/"
        wait_for("ext web server", lambda: run_in(lab.ext_netns, "curl", "-s", url).returncode
                 == 0, timeout=10)
        yield url
    finally:
        proc.kill()
        proc.wait()


def test_tasks_go_out_through_their_node_and_internal_ones_cannot(world: World,
                                                                   ext_server: str) -> None:
    for t in world.tasks["fa"] + world.tasks["pub"]:
        out = in_task(t, "curl", "-s", "--max-time", "3", ext_server)
        assert out.returncode == 0, (t["NodeID"], out)
        # The outside sees the task's node (masqueraded), never a task address.
        assert out.stdout == world.node_of(t).addr
    priv = world.tasks["priv"][0]
    # No gateway veth, no default route, no way out.
    assert in_task(priv, "ip", "-o", "route", "show", "default").stdout == ""
    links = in_task(priv, "ip", "-o", "link", "show").stdout
    assert "eth0" in links and "eth1" not in links
    assert in_task(priv, "curl", "-s", "--max-time", "3", ext_server).returncode != 0
    for route in (["default", "via", GATEWAY], ["default", "dev", "eth0"]):
        # even a route made by hand finds nothing: there is no gateway on its network
        in_task(priv, "ip", "route", "replace", *route)
        try:
            assert in_task(priv, "curl", "-s", "--max-time", "2", ext_server).returncode != 0
        finally:
            in_task(priv, "ip", "route", "del", "default")


def test_outside_reaches_published_ports_only(world: World) -> None:
    lab = world.lab
    n1 = lab.nodes[0]
    result = connect(lab.ext_netns, [on(n.addr, PUBLISHED) for n in lab.nodes])
    assert set(result.values()) == {"ok"}, result
    # Dropped, not refused: nothing answers on an unpublished port, nor on the manager's.
    result = connect(lab.ext_netns, [on(n1.addr, UNPUBLISHED), on(n1.addr, 2377),
                                     on(lab.nodes[1].addr, 22)])
    assert set(result.values()) == {"TimeoutError"}, result
    assert connect(lab.nodes[1].netns, [on(n1.addr, 2377)]) == {on(n1.addr, 2377): "ok"}
    # Routed at a node on purpose, task and gateway addresses stay out of reach.
    fa_here = next(t for t in world.tasks["fa"] if world.node_of(t) == n1)
    targets = [on(addr(fa_here)), on(addr_on(world.tasks["pub"][0], world.ingress)),
               on(GATEWAY, 80)]
    gw_addr = in_task(fa_here, "ip", "-4", "-o", "addr", "show", "dev", "eth1").stdout.split()
    targets.append(on(gw_addr[3].split("/")[0]))
    routes = ["10.0.0.0/8", "172.18.0.0/16"]
    for r in routes:
        run_in(lab.ext_netns, "ip", "route", "replace", r, "via", n1.addr)
    try:
        result = connect(lab.ext_netns, targets)
    finally:
        for r in routes:
            run_in(lab.ext_netns, "ip", "route", "del", r)
    assert "ok" not in result.values(), result


def _inject(world: World, sender: str, target: dict, node_addr: str, tag: str) -> str:
    """Send a VXLAN packet for `target` (an fa task) from namespace `sender` to node_addr:4789;
    return what a UDP listener in the task got."""
    ip = addr(target)
    mac = "02:42:" + ":".join(f"{int(p):02x}" for p in ip.split("."))
    src = ip.rsplit(".", 1)[0] + ".250"
    listener = subprocess.Popen(["ip", "netns", "exec", netns(target), sys.executable, "-c",
                                 UDP_LISTEN, "9999", "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        sent = run_in(sender, sys.executable, "-c", VXLAN_INJECT, node_addr,
                      str(world.vni[FRONT]), mac, src, ip, "9999", tag)
        assert sent.returncode == 0, sent.stderr
        return listener.stdout.readline().strip()
    finally:
        listener.kill()
        listener.wait()


def test_vxlan_from_outside_or_from_a_task_is_never_delivered(world: World) -> None:
    lab = world.lab
    n1, n2 = lab.nodes[0], lab.nodes[1]
    target = next(t for t in world.tasks["fa"] if world.node_of(t) == n1)
    # The control: the same packet from a peer node is delivered (the probe is real VXLAN).
    src = addr(target).rsplit(".", 1)[0] + ".250"
    assert _inject(world, n2.netns, target, n1.addr, "from-peer") == f"from-peer {src}"
    # From the outside world: dropped at the node.
    assert _inject(world, lab.ext_netns, target, n1.addr, "from-ext") == "nothing"
    # From a task on another node, whose egress is masqueraded to that peer's own address:
    # kept from the peers' VXLAN port all the same.
    other = next(t for t in world.tasks["fa"] if world.node_of(t) == n2)
    assert _inject(world, netns(other), target, n1.addr, "from-task") == "nothing"
    # Nor may a task call the control plane, through its own node or another.
    result = connect(netns(other), [on(n1.addr, 2377), on(GATEWAY, 2377)])
    assert "ok" not in result.values(), result


def test_the_node_filter_is_one_table_rendered_from_the_view(world: World) -> None:
    lab = world.lab
    for node in lab.nodes:
        tables = run_in(node.netns, "nft", "list", "tables").stdout.splitlines()
        assert "table inet shoal_filter" in tables and "table bridge shoal_filter" in tables
        text = run_in(node.netns, "nft", "list", "table", "inet", "shoal_filter").stdout
        assert f"tcp . {PUBLISHED}" in text
        # The control plane is open on the manager's node only, to the lab's nodes.
        assert ("tcp dport 2377 accept" in text) == (node == lab.manager_node)
