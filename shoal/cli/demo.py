"""`make demo`: bring up a lab and walk through what shoal does, printing each real command.

Every step runs the real `shoal` command (and the docker CLI where it is installed) against the
lab, so what the demo prints is exactly what a user would see typing the same lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from shoal.client import Client
from shoal.errors import ShoalError


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _run(args: list[str], env: dict[str, str], check: bool = True) -> str:
    shown = " ".join(args)
    print(f"$ {shown}", flush=True)
    cmd = [sys.executable, "-m", "shoal", *args[1:]] if args[0] == "shoal" else args
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    text = (out.stdout + out.stderr).rstrip()
    if text:
        print(text, flush=True)
    if check and out.returncode != 0:
        raise ShoalError(f"demo step failed: {shown}")
    return out.stdout


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


def run_demo(name: str, nodes: int) -> int:
    from shoal import lab, preflight

    preflight.check()
    _say(f"A {nodes}-node lab: every node a network namespace, an underlay switch, no way out")
    up = lab.lab_up(name, nodes)
    env = {**os.environ, "DOCKER_HOST": up.docker_host}
    client = Client(up.docker_host)
    for svc in ("web",):
        try:
            client.request("DELETE", f"/services/{svc}")
        except ShoalError:
            pass
    _run(["shoal", "node", "ls"], env)

    _say("An overlay network: a bridge and a VXLAN device per node, static FDB and ARP entries")
    try:
        client.find("network", "appnet")
        print("(appnet already exists)")
    except ShoalError:
        _run(["shoal", "network", "create", "-d", "overlay", "appnet"], env)
    _run(["shoal", "network", "ls"], env)

    _say("A replicated service: 6 tasks, each a process in its own namespace, spread 2/2/2")
    _run(["shoal", "service", "create", "--name", "web", "--replicas", "6", "--network",
          "appnet", "--", "python3", "-m", "http.server", "80"], env)
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
    _run(["shoal", "exec", "web.1", "--", "curl", "-s", "-o", "/dev/null", "-w",
          "HTTP %{http_code} from " + addr + " in %{time_total}s\\n", f"http://{addr}/"], env)

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
- scaling down, with the removed tasks' namespaces cleaned up

The lab is still up. Try:
  export DOCKER_HOST={up.docker_host}
  shoal service ps web        # or: docker service ps web
  shoal lab down              # removes everything the lab made""")
    return 0
