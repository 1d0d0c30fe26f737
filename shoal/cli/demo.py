"""`make demo`: bring up a lab and walk through what shoal does, printing each real command.

Every step runs the real `shoal` command (and the docker CLI where it is installed) against the
lab, so what the demo prints is exactly what a user would see typing the same lines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from shoal.client import Client
from shoal.errors import ShoalError


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _run(args: list[str], env: dict[str, str], check: bool = True) -> str:
    shown = shlex.join("<whoami server script>" if "\n" in a else a for a in args)
    print(f"$ {shown}", flush=True)
    cmd = [sys.executable, "-m", "shoal", *args[1:]] if args[0] == "shoal" else args
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    text = (out.stdout + out.stderr).rstrip()
    if text:
        print(text, flush=True)
    if check and out.returncode != 0:
        raise ShoalError(f"demo step failed: {shown}")
    return out.stdout


# A tiny web server that answers with its task's name and the address it saw the client at.
WHOAMI = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['SHOAL_TASK_NAME']} saw {self.client_address[0]}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 80), H).serve_forever()
"""
HEALTH = "curl -sf -o /dev/null http://127.0.0.1/"


def _routed(up: object, addr: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", up.ext_netns, "curl", "-s", "-o", "/dev/null",
                          "-w", "%{http_code}", "-H", "Host: app.example.org",
                          f"http://{addr}/"], capture_output=True, text=True)  # type: ignore
    return out.stdout == "200"


def _wait_healthy(client: Client, service: str, count: int, timeout: float = 30.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        tasks = client.get("/tasks", filters=json.dumps({"service": [service],
                                                         "desired-state": ["running"]}))
        if sum(1 for t in tasks if t["Status"].get("ContainerStatus", {}).get(
                "Health") == "healthy") == count:
            return
        time.sleep(0.1)
    raise ShoalError(f"{service} did not have {count} healthy tasks in {timeout:.0f}s")


def _wait_running(client: Client, service: str, count: int, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        tasks = client.get("/tasks", filters=json.dumps({"service": [service],
                                                         "desired-state": ["running"]}))
        if sum(1 for t in tasks if t["Status"]["State"] == "running") == count and \
                len(tasks) == count:
            return time.monotonic() - start
        time.sleep(0.1)
    raise ShoalError(f"{service} did not reach {count} running tasks in {timeout:.0f}s")


def _network(client: Client, env: dict[str, str], name: str, *opts: str) -> None:
    """Create the network unless a previous demo run left it."""
    try:
        client.find("network", name)
        print(f"({name} already exists)")
    except ShoalError:
        _run(["shoal", "network", "create", *opts, name], env)


def _isolation(up: object, client: Client, env: dict[str, str], web_addr: str) -> None:
    _say("Isolation: a task on another network cannot reach appnet, even by address")
    _network(client, env, "othernet")
    _run(["shoal", "service", "create", "--name", "probe", "--network", "othernet", "--",
          "sleep", "infinity"], env)
    _wait_running(client, "probe", 1)
    _run(["shoal", "exec", "probe.1", "--", "curl", "-sS", "--max-time", "2",
          f"http://{web_addr}/"], env, check=False)
    print("(no way there: a task has routes to its own networks only, and every node drops a "
          "packet between networks, even one routed by hand)")
    _run(["shoal", "exec", "probe.1", "--", "dig", "+short", "+tcp", "@198.18.0.2",
          "www.outside.test"], env, check=False)
    print("(egress to the outside goes through the node, masqueraded; --internal has none)")
    _run(["ip", "netns", "exec", up.ext_netns, "curl", "-sS", "--max-time", "2",  # type: ignore
          f"http://{up.nodes[0].addr}:2377/"], env, check=False)  # type: ignore
    print("(from outside only published ports and the mesh answer; the manager's port is "
          "for cluster nodes)")


def _control_plane(up: object, env: dict[str, str]) -> None:
    _say("The control plane: mutual TLS 1.3 with the cluster's own CA, roles, an audit log")
    node2 = up.nodes[1]  # type: ignore
    _run(["openssl", "x509", "-noout", "-subject", "-enddate", "-in",
          str(up.node_state_dir(node2) / "tls" / "node.pem")], env)  # type: ignore
    print("(node2's certificate: CN its node id, OU its role, O the cluster; renewed at a "
          "random 50-80 % of its life)")
    certs = up.run_dir / "demo-viewer"  # type: ignore
    _run(["shoal", "user", "create", "dora", "--role", "viewer", "--out", str(certs)], env)
    remote = {**env, "DOCKER_HOST": f"tcp://{up.manager_addr}", "DOCKER_TLS_VERIFY": "1",  # type: ignore
              "DOCKER_CERT_PATH": str(certs)}
    in_node2 = ["ip", "netns", "exec", node2.netns]
    if shutil.which("docker"):
        _run([*in_node2, "docker", "service", "ls"], remote, check=False)
        _run([*in_node2, "docker", "service", "rm", "web"], remote, check=False)
    else:
        _run([*in_node2, sys.executable, "-m", "shoal", "service", "ls"], remote, check=False)
    print("(a viewer reads but may not change; the docker CLI checks the manager's certificate)")
    _run(["shoal", "audit"], env)


def _encryption(client: Client, env: dict[str, str]) -> str:
    _say("An encrypted network: its VXLAN rides inside WireGuard (wireguard-go on every node)")
    _network(client, env, "secnet", "--opt", "encrypted")
    _run(["shoal", "service", "create", "--name", "secret", "--replicas", "2", "--network",
          "secnet", "--", "python3", "-c", WHOAMI], env)
    _wait_running(client, "secret", 2)
    tasks = client.get("/tasks", filters=json.dumps({"service": ["secret"],
                                                     "desired-state": ["running"]}))
    other = next(t for t in tasks if t["Slot"] != 1)
    addr = other["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    deadline = time.monotonic() + 10
    while True:  # "running" is the process started; the server may need a moment
        out = _run(["shoal", "exec", "secret.1", "--", "curl", "-s", f"http://{addr}/"], env,
                   check=False)
        if out or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print("(`shoal network inspect secnet` says, per node:)")
    for node in client.get("/networks/secnet")["Encryption"]["Nodes"]:
        peers = ", ".join(f"{p['Name']} handshake {p['LastHandshake'][11:19] or 'none yet'}"
                          for p in node.get("Peers", []))
        state = "up" if node.get("Up") else ("ready" if node["Ready"] else
                                             f"cannot encrypt: {node['Error']}")
        print(f"  {node['Name']}: {state}, tunnel {node['TunnelAddr']}"
              + (f", peers: {peers}" if peers else ", no task on secnet"))
    return addr


def _sniff(up: object, client: Client, env: dict[str, str], plain_addr: str,
           secret_addr: str) -> None:
    _say("What the underlay carries: the same request over appnet and over secnet")
    for net, task, addr in (("appnet", "web.1", plain_addr), ("secnet", "secret.1",
                                                               secret_addr)):
        marker = f"demo-marker-{net}"
        print(f"$ ip netns exec {up.switch_netns} tcpdump -i any -A udp &  # on the switch"  # type: ignore
              f"\n$ shoal exec {task} -- curl -s http://{addr}/{marker}")
        sniff = subprocess.Popen(["ip", "netns", "exec", up.switch_netns,  # type: ignore
                                  "timeout", "3", "tcpdump", "-i", "any", "-l", "-A", "udp"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run([sys.executable, "-m", "shoal", "exec", task, "--", "curl", "-s",
                        "-o", "/dev/null", f"http://{addr}/{marker}"], env=env,
                       capture_output=True, timeout=30)
        seen = sniff.communicate(timeout=10)[0].decode(errors="replace")
        print(f"(the path {marker} {'IS' if marker in seen else 'is NOT'} readable on the "
              f"wire over {net})")


def run_demo(name: str, nodes: int) -> int:
    from shoal import lab, preflight

    preflight.check()
    _say(f"A {nodes}-node lab: every node a network namespace, an underlay switch, no way out")
    up = lab.lab_up(name, nodes)
    env = {**os.environ, "DOCKER_HOST": up.docker_host}
    client = Client(up.docker_host)
    for svc in ("web", "app", "probe", "secret"):
        try:
            client.request("DELETE", f"/services/{svc}")
        except ShoalError:
            pass
    _run(["shoal", "node", "ls"], env)

    _say("An overlay network: a bridge and a VXLAN device per node, static FDB and ARP entries")
    _network(client, env, "appnet", "-d", "overlay")
    _run(["shoal", "network", "ls"], env)

    _say("A replicated service: 6 tasks, each a process in its own namespace, spread 2/2/2,")
    print("   with a health check and port 8080 published on every node")
    _run(["shoal", "service", "create", "--name", "web", "--replicas", "6", "--network",
          "appnet", "--publish", "8080:80", "--health-cmd", HEALTH, "--health-interval", "0.5",
          "--", "python3", "-c", WHOAMI], env)
    took = _wait_running(client, "web", 6)
    print(f"(6 tasks running {took:.2f}s after create returned)")
    _run(["shoal", "service", "ps", "web"], env)

    _say("Every task reaches every other over the overlay, across nodes")
    tasks = client.get("/tasks", filters=json.dumps({"service": ["web"],
                                                     "desired-state": ["running"]}))
    nodes_by_id = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
    by_slot = {t["Slot"]: t for t in tasks}
    first = by_slot[1]
    other = next(t for t in tasks if t["NodeID"] != first["NodeID"])
    addr = other["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    print(f"(web.1 runs on {nodes_by_id[first['NodeID']]}, web.{other['Slot']} on "
          f"{nodes_by_id[other['NodeID']]} at {addr})")
    _run(["shoal", "exec", "web.1", "--", "curl", "-s", f"http://{addr}/"], env)

    _say("Service discovery: each task asks 127.0.0.11, its node's resolver")
    _wait_healthy(client, "web", 6)
    _run(["shoal", "exec", "web.1", "--", "dig", "+short", "web"], env)
    print("(the VIP)")
    _run(["shoal", "exec", "web.1", "--", "dig", "+short", "tasks.web"], env)
    print("(the healthy tasks)")
    _run(["shoal", "exec", "web.1", "--", "dig", "+short", "www.outside.test"], env)
    print("(not a cluster name: forwarded to the upstream server on the ext host)")

    _say("Load balancing: the VIP spreads connections over the healthy tasks, in the kernel")
    _run(["shoal", "exec", "web.1", "--", "sh", "-c",
          "for i in $(seq 60); do curl -s http://web/; done | cut -d' ' -f1 | sort | uniq -c"],
         env)
    print("(backends see the caller's own address: no SNAT on the VIP path)")

    _say("The ingress routing mesh: port 8080 answers on every node, from outside")
    for node in up.nodes:
        _run(["ip", "netns", "exec", up.ext_netns, "curl", "-s", f"http://{node.addr}:8080/"],
             env)
    print(f"(each answer names the task, then the client it saw: {up.ext_addr}, the ext host)")

    _say("The HTTP routing mesh: port 80 on every node routes by Host header")
    _run(["shoal", "service", "create", "--name", "app", "--label",
          "shoal.http.host=app.example.org", "--", "python3", "-c", WHOAMI], env)
    _wait_running(client, "app", 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _routed(up, up.nodes[-1].addr):
        time.sleep(0.1)
    _run(["ip", "netns", "exec", up.ext_netns, "curl", "-s", "-H", "Host: app.example.org",
          f"http://{up.nodes[-1].addr}/"], env)
    _run(["ip", "netns", "exec", up.ext_netns, "curl", "-s", "-H", "Host: nobody.example.org",
          f"http://{up.nodes[-1].addr}/"], env)

    _isolation(up, client, env, addr)
    _control_plane(up, env)
    secret_addr = _encryption(client, env)
    plain = next(t for t in client.get("/tasks", filters=json.dumps(
        {"service": ["web"], "desired-state": ["running"]})) if t["NodeID"] != first["NodeID"])
    _sniff(up, client, env, plain["NetworksAttachments"][0]["Addresses"][0].split("/")[0],
           secret_addr)

    _say("Scaling: 6 -> 2, and the tasks, namespaces and veths of slots 3-6 go away")
    _run(["shoal", "service", "scale", "web=2"], env)
    _wait_running(client, "web", 2)
    _run(["shoal", "service", "ls"], env)

    if shutil.which("docker"):
        _say("The real docker CLI speaks to the same manager")
        _run(["docker", "service", "ls"], env, check=False)
        _run(["docker", "node", "ls"], env, check=False)

    _say("What this showed")
    print(f"""- a {nodes}-node lab in namespaces, with a manager on node1 and an agent on every node
- an overlay network (VXLAN, static forwarding entries) and a service of 6 tasks spread 2/2/2
- a task reaching a task on another node over the overlay, with curl
- names answered by each node's resolver, scoped to the asker's networks, others forwarded
- a VIP balanced in the kernel over healthy tasks, the callers' addresses kept
- a published port answering on every node, the outside client's address kept
- the HTTP routing mesh sending a Host header to its service from any node
- networks isolated from each other, egress through the node, nothing open to the outside
- mutual TLS between every node and the manager, a viewer refused a change, the audit log
- an encrypted network: its VXLAN inside WireGuard, per-node status in network inspect,
  and a capture on the underlay that reads appnet's request but not secnet's
- scaling down, with the removed tasks' namespaces cleaned up

The lab is still up. Try:
  export DOCKER_HOST={up.docker_host}
  shoal service ps web        # or: docker service ps web
  shoal lab down              # removes everything the lab made""")
    return 0
