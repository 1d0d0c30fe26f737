"""Load balancing in a real lab: VIPs balanced in the kernel, health checks, draining on scale
down, and published ports through the ingress routing mesh, as seen from tasks and from ext."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter

import pytest

from shoal.client import Client
from tests.integration.test_cluster import in_task, running, shoal, wait_for

# Answers with the task's name and the address it saw the client come from.
WHOAMI = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = " ".join((os.environ["SHOAL_TASK_NAME"], self.client_address[0],
                         self.headers.get("X-Forwarded-For", "-"))).encode() + b"\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print(self.client_address[0], flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), H).serve_forever()
"""

# Many requests, each on a new connection; prints a JSON count of answers and errors.
CLIENT = """
import json, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
seen, errors = {}, []
for _ in range(n):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            name = r.read().decode().split()[0]
            seen[name] = seen.get(name, 0) + 1
    except Exception as e:
        errors.append(repr(e))
print(json.dumps({"seen": seen, "errors": errors}))
"""


@pytest.fixture
def client(lab):
    return Client(lab.docker_host)


@pytest.fixture
def appnet(lab, client):
    shoal(lab, "network", "create", "appnet")
    yield "appnet"
    for svc in client.get("/services"):
        client.request("DELETE", f"/services/{svc['ID']}")
    wait_for("tasks gone", lambda: not client.get("/tasks"), timeout=30)
    client.request("DELETE", "/networks/appnet")


def create(client: Client, name: str, replicas: int, **extra) -> dict:
    spec = {"Name": name, "TaskTemplate": {
        "ContainerSpec": {"Image": "local", "Args": ["python3", "-c", WHOAMI],
                          **extra.pop("container", {})},
        "Networks": [{"Target": "appnet"}], "RestartPolicy": {"Delay": 200_000_000}},
        "Mode": {"Replicated": {"Replicas": replicas}}, **extra}
    client.request("POST", "/services/create", spec)
    return client.find("service", name)


def vip(svc: dict, client: Client) -> str:
    net = client.find("network", "appnet")["Id"]
    return next(v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]
                if v["NetworkID"] == net).split("/")[0]


def requests(task: dict, url: str, n: int) -> dict:
    out = in_task(task, "python3", "-c", CLIENT, url, str(n), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scale(client: Client, name: str, replicas: int) -> None:
    svc = client.find("service", name)
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = replicas
    client.request("POST", f"/services/{svc['ID']}/update", spec,
                   query={"version": svc["Version"]["Index"]})


def test_vip_spreads_evenly_and_backends_see_the_caller(lab, client, appnet):
    svc = create(client, "web", 3)
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    wait_for("3 running", lambda: running(client, "web", 3))
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    address = vip(svc, client)
    wait_for("vip answers", lambda: requests(probe, f"http://{address}/", 1)["seen"])
    result = requests(probe, f"http://{address}/", 1000)
    assert result["errors"] == []
    counts = result["seen"]
    assert sorted(counts) == ["web.1", "web.2", "web.3"]
    for count in counts.values():
        assert abs(count - 1000 / 3) <= 0.25 * 1000 / 3, counts
    # The backend saw the probe's own address, not a load balancer's.
    out = in_task(probe, "curl", "-s", f"http://{address}/").stdout.split()
    assert out[1] == probe["NetworksAttachments"][0]["Addresses"][0].split("/")[0]


def test_no_healthy_task_is_refused_at_once(lab, client, appnet):
    svc = create(client, "web", 1)
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    wait_for("web", lambda: running(client, "web", 1))
    scale(client, "web", 0)
    wait_for("web gone", lambda: not [t for t in client.get("/tasks")
                                      if t["ServiceID"] == svc["ID"]])
    start = time.monotonic()
    out = in_task(probe, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                  "--max-time", "5", f"http://{vip(svc, client)}/")
    assert out.returncode == 7, out  # curl: could not connect (refused)
    assert time.monotonic() - start < 1.0


LISTENING = {"Test": ["CMD", "python3", "-c",
                      "import socket; socket.create_connection(('127.0.0.1', 80), 1)"],
             "Interval": 100_000_000, "Timeout": 1_000_000_000, "Retries": 2}


def test_scaling_down_and_up_drops_nothing(lab, client, appnet):
    # With a health check, a new task joins the VIP only once it listens.
    svc = create(client, "web", 3, container={"Healthcheck": LISTENING})
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    wait_for("3 running", lambda: running(client, "web", 3))
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    url = f"http://{vip(svc, client)}/"
    wait_for("vip answers", lambda: requests(probe, url, 1)["seen"])

    results: list[dict] = []
    loop = threading.Thread(target=lambda: results.append(requests(probe, url, 1500)))
    loop.start()
    time.sleep(0.5)
    scale(client, "web", 1)
    wait_for("1 running", lambda: running(client, "web", 1))
    scale(client, "web", 3)
    wait_for("3 running", lambda: running(client, "web", 3))
    loop.join()
    assert results[0]["errors"] == [], results[0]["errors"][:3]


def test_unhealthy_task_leaves_the_vip_and_is_replaced(lab, client, appnet):
    # Healthy while /tmp/sick-<task> does not exist.
    health = {"Test": ["CMD-SHELL", "test ! -e /tmp/sick-$SHOAL_TASK_ID"],
              "Interval": 200_000_000, "Timeout": 1_000_000_000, "Retries": 2}
    svc = create(client, "web", 2, container={"Healthcheck": health})
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    tasks = wait_for("2 running", lambda: running(client, "web", 2))
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    url = f"http://{vip(svc, client)}/"
    wait_for("both healthy behind the vip",
             lambda: len(requests(probe, url, 40)["seen"]) == 2, timeout=20)
    sick = tasks[0]
    open(f"/tmp/sick-{sick['ID']}", "w").close()
    try:
        name = f"web.{sick['Slot']}"
        # Within the health interval x retries (+ propagation) it no longer gets traffic...
        wait_for("sick task out", lambda: name not in requests(probe, url, 20)["seen"],
                 timeout=10)
        # ... and it is replaced by a new task in its slot.
        wait_for("replaced", lambda: any(
            t["Slot"] == sick["Slot"] and t["ID"] != sick["ID"]
            for t in running(client, "web", 2) or []), timeout=20)
    finally:
        subprocess.run(["rm", "-f", f"/tmp/sick-{sick['ID']}"])


def ext_curl(lab, addr: str, port: int, timeout: float = 3) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.ext_netns, "curl", "-s", "--max-time",
                           str(timeout), f"http://{addr}:{port}/"], capture_output=True,
                          text=True, timeout=timeout + 5)


def test_published_port_answers_on_every_node_and_shows_the_client(lab, client, appnet):
    create(client, "web", 1, EndpointSpec={"Ports": [{"TargetPort": 80,
                                                      "PublishedPort": 8080}]})
    [task] = wait_for("1 running", lambda: running(client, "web", 1))
    for node in lab.nodes:  # two of the three have no task of web
        out = wait_for(f"{node.name}:8080", lambda n=node: (
            lambda r: r if r.returncode == 0 else None)(ext_curl(lab, n.addr, 8080)), timeout=10)
        name, seen, _ = out.stdout.split()
        assert name == "web.1"
        assert seen == lab.ext_addr  # the client's own address, through the mesh
    # An unpublished port is refused or times out.
    assert ext_curl(lab, lab.nodes[1].addr, 8081, timeout=2).returncode != 0


def test_host_mode_answers_only_where_a_task_runs(lab, client, appnet):
    create(client, "web", 1, EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": 8090,
                                                      "PublishMode": "host"}]})
    [task] = wait_for("1 running", lambda: running(client, "web", 1))
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
    for node in lab.nodes:
        if nodes[task["NodeID"]] == node.name:
            out = wait_for("host port", lambda n=node: (
                lambda r: r if r.returncode == 0 else None)(ext_curl(lab, n.addr, 8090)))
            assert out.stdout.split()[:2] == ["web.1", lab.ext_addr]
        else:
            assert ext_curl(lab, node.addr, 8090, timeout=2).returncode != 0


def test_a_taken_published_port_is_refused(lab, client, appnet):
    create(client, "web", 1, EndpointSpec={"Ports": [{"TargetPort": 80,
                                                      "PublishedPort": 8080}]})
    before = client.get("/services")  # without status: only what a refused create could touch
    with pytest.raises(Exception, match="8080/tcp is already published"):
        create(client, "other", 1, EndpointSpec={"Ports": [{"TargetPort": 80,
                                                           "PublishedPort": 8080}]})
    assert client.get("/services") == before
    assert Counter(t["ServiceID"] for t in client.get("/tasks")).keys() == {
        before[0]["ID"]}


TIMED_CLIENT = """
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
ok, errors, end = 0, [], time.time() + seconds
while time.time() < end:
    began = time.time()
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
            ok += 1
    except Exception:
        errors.append(began)
print(json.dumps({"ok": ok, "errors": errors}))
"""


def test_a_killed_task_costs_errors_only_until_the_balancers_learn(lab, client, appnet):
    svc = create(client, "web", 3, container={"Healthcheck": LISTENING})
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    tasks = wait_for("3 running", lambda: running(client, "web", 3))
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    url = f"http://{vip(svc, client)}/"
    wait_for("all healthy", lambda: len(requests(probe, url, 30)["seen"]) == 3, timeout=20)
    results: list[dict] = []

    def loop() -> None:
        out = in_task(probe, "python3", "-c", TIMED_CLIENT, url, "4", timeout=60)
        results.append(json.loads(out.stdout))

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(1.5)
    killed_at = time.time()
    import os
    import signal
    os.kill(tasks[0]["Status"]["ContainerStatus"]["PID"], signal.SIGKILL)
    thread.join()
    [result] = results
    assert result["ok"] > 50
    late = [t - killed_at for t in result["errors"] if t - killed_at > 0.3]
    # The health interval here is 0.1 s: the dead task is out of every VIP well within it
    # plus one push; no request begun after that fails.
    assert late == [], late


UDP_ECHO = """
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 9999))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(os.environ["SHOAL_TASK_NAME"].encode() + b" " + peer[0].encode(), peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(2048)[0].decode())
"""


def test_udp_through_the_vip_and_a_published_port(lab, client, appnet):
    svc = create(client, "echo", 1, container={"Args": ["python3", "-c", UDP_ECHO]},
                 EndpointSpec={"Ports": [{"TargetPort": 9999, "PublishedPort": 9999,
                                          "Protocol": "udp"}]})
    create(client, "probe", 1, container={"Args": ["sleep", "600"]})
    wait_for("echo", lambda: running(client, "echo", 1))
    [probe] = wait_for("probe", lambda: running(client, "probe", 1))
    out = wait_for("udp via vip", lambda: (lambda r: r if r.returncode == 0 else None)(
        in_task(probe, "python3", "-c", UDP_ASK, vip(svc, client), "9999")))
    assert out.stdout.split() == ["echo.1", addr_of(probe)]
    for node in lab.nodes:
        out = wait_for(f"udp via {node.name}", lambda n=node: (
            lambda r: r if r.returncode == 0 else None)(subprocess.run(
                ["ip", "netns", "exec", lab.ext_netns, "python3", "-c", UDP_ASK, n.addr, "9999"],
                capture_output=True, text=True, timeout=10)))
        assert out.stdout.split() == ["echo.1", lab.ext_addr]


def addr_of(task: dict) -> str:
    return task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
