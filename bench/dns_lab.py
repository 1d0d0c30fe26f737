"""DNS in a real 3-node lab: forwarding overhead, and how soon every node's answers follow the API.

    .venv/bin/python bench/dns_lab.py [--trials 20 --seconds 5 --rounds 3]

Builds lab `bdns` (taken down at the end, also on failure), a network, a global `probe`
service (one task per node) and a `web` service.

Forwarding: the same query file of outside names (www.outside.test ... served by ext's dnsmasq)
sent by dnsperf from inside a probe task to 127.0.0.11 (resolver -> dnsmasq, the forwarded
path), and from that task's node namespace straight to dnsmasq at 198.18.0.2 (the direct path).
Rounds interleaved; throughput unlimited, latency at a fixed rate from dnsperf -v.

Propagation: per trial, a poller in every probe task asks 127.0.0.11 every 2 ms; the bench
makes one Docker API call and takes the time until the last node's answer has followed
(CLOCK_MONOTONIC is one clock for every namespace). Kinds: service create (its name appears),
service rm (its name goes), scale down (a task's address leaves tasks.web), scale up (a new
address joins; this one includes starting the task).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dns_common import ROOT, dnsperf, load, log, median, pct

from shoal.client import Client
from shoal.lab import lab_down, lab_up

LAB = "bdns"
OUTSIDE = ["www.outside.test", "outside.test", "api.outside.test"]

POLLER = r"""
import socket, struct, sys, time, random
name, want = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.05)
s.connect(("127.0.0.11", 53))
q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\x01\0\x01"
print("ready", flush=True)
while True:
    qid = random.getrandbits(16)
    s.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q)
    try:
        r = s.recv(4096)
    except OSError:
        continue
    an = struct.unpack_from("!H", r, 6)[0]
    ok = (want == "present" and an > 0) or (want == "absent" and an == 0) or \
         (want.startswith("count=") and an == int(want[6:]))
    if ok:
        print(time.monotonic(), flush=True)
        break
    time.sleep(0.002)
"""


def shoal(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "shoal", "--lab", LAB, *args],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"shoal {' '.join(args)}: {out.stderr}")
    return out.stdout


def running(c: Client, service: str, count: int) -> list[dict] | None:
    tasks = c.get("/tasks", filters=json.dumps({"service": [service],
                                                "desired-state": ["running"]}))
    up = [t for t in tasks if t["Status"]["State"] == "running"]
    return up if len(up) == count == len(tasks) else None


def wait(what: str, test, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = test()
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def netns(task: dict) -> str:
    return task["Status"]["ContainerStatus"]["ContainerID"]


def propagate(probes: list[dict], name: str, want: str, call) -> float:  # type: ignore[no-untyped-def]
    pollers = [subprocess.Popen(["ip", "netns", "exec", netns(p), "python3", "-c", POLLER,
                                 name, want], stdout=subprocess.PIPE, text=True)
               for p in probes]
    try:
        for p in pollers:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        started = time.monotonic()
        call()
        seen = []
        for p in pollers:
            assert p.stdout is not None
            p.wait(60)
            seen.append(float(p.stdout.readline()))
        return max(seen) - started
    finally:
        for p in pollers:
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000, help="qps of the latency runs")
    args = ap.parse_args()
    lab_down(LAB)
    try:
        lab = lab_up(LAB, nodes=3)
        c = Client(lab.docker_host)
        shoal("network", "create", "appnet")
        shoal("service", "create", "--name", "probe", "--mode", "global", "--network", "appnet",
              "--", "sleep", "3600")
        shoal("service", "create", "--name", "web", "--replicas", "3", "--network", "appnet",
              "--", "sleep", "3600")
        probes = wait("probes", lambda: running(c, "probe", 3))
        wait("web", lambda: running(c, "web", 3))
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in c.get("/nodes")}
        probe = next(p for p in probes if nodes[p["NodeID"]] == "node2")
        node_ns = lab.node("node2").netns

        # --- forwarding ---
        fwd: dict[str, dict[str, list[float]]] = {"forwarded": {}, "direct": {}}
        with tempfile.TemporaryDirectory(prefix="shoal-bdns-") as tmp:
            queries = Path(tmp) / "outside"
            queries.write_text("".join(f"{n} A\n" for n in OUTSIDE))
            paths = [("forwarded", netns(probe), "127.0.0.11"),
                     ("direct", node_ns, lab.ext_addr)]
            for ns, server in ((netns(probe), "127.0.0.11"), (node_ns, lab.ext_addr)):
                dnsperf(ns, server, queries, 1, rate=1000)  # warm up
            for r in range(args.rounds):
                for label, ns, server in paths:
                    tput = dnsperf(ns, server, queries, args.seconds)
                    lat = dnsperf(ns, server, queries, args.seconds, rate=args.rate,
                                  verbose=True)
                    log(f"round {r + 1} {label}: {tput['qps']:.0f} qps lost {tput['lost']}; "
                        f"p50 {lat['p50'] * 1e6:.0f} us p99 {lat['p99'] * 1e6:.0f} us")
                    for key, value in (("qps", tput["qps"]), ("p50", lat["p50"]),
                                       ("p99", lat["p99"])):
                        fwd[label].setdefault(key, []).append(value)

        # --- propagation ---
        times: dict[str, list[float]] = {"create": [], "rm": [], "scale down": [],
                                         "scale up": []}
        net_id = c.find("network", "appnet")["Id"]

        def create(name: str) -> None:
            c.request("POST", "/services/create", {
                "Name": name, "TaskTemplate": {
                    "ContainerSpec": {"Image": "local", "Args": ["sleep", "3600"]},
                    "Networks": [{"Target": net_id}]},
                "Mode": {"Replicated": {"Replicas": 0}}})

        def scale(count: int) -> None:
            svc = c.find("service", "web")
            spec = svc["Spec"]
            spec["Mode"]["Replicated"]["Replicas"] = count
            c.request("POST", f"/services/{svc['ID']}/update", spec,
                      query={"version": svc["Version"]["Index"]})

        for i in range(args.trials):
            name = f"p{i}"
            times["create"].append(propagate(probes, name, "present",
                                             lambda n=name: create(n)))  # type: ignore[misc]
            times["rm"].append(propagate(probes, name, "absent", lambda n=name: c.request(
                "DELETE", f"/services/{n}")))
            times["scale down"].append(propagate(probes, "tasks.web", "count=2",
                                                 lambda: scale(2)))
            times["scale up"].append(propagate(probes, "tasks.web", "count=3",
                                               lambda: scale(3)))
            log(f"trial {i + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms"
                                               for k, v in times.items()))
    finally:
        lab_down(LAB)

    print(f"\nload average at the end: {load()}")
    print("\nforwarded (task -> 127.0.0.11 -> dnsmasq on ext) vs direct (node -> dnsmasq), "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s, medians")
    print(f"{'path':<10} {'qps':>8} {'p50 us':>8} {'p99 us':>8}")
    for label, row in fwd.items():
        print(f"{label:<10} {median(row['qps']):>8.0f} {median(row['p50']) * 1e6:>8.0f} "
              f"{median(row['p99']) * 1e6:>8.0f}")
    f, d = fwd["forwarded"], fwd["direct"]
    print(f"overhead: {median(f['qps']) / median(d['qps']):.2f}x the direct qps, "
          f"+{(median(f['p50']) - median(d['p50'])) * 1e6:.0f} us at p50, "
          f"+{(median(f['p99']) - median(d['p99'])) * 1e6:.0f} us at p99")
    print(f"\nDocker API call -> every node's answer follows, {args.trials} trials")
    print(f"{'change':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, values in times.items():
        print(f"{kind:<12} {pct(values, 50) * 1e3:>8.0f} {pct(values, 99) * 1e3:>8.0f} "
              f"{max(values) * 1e3:>8.0f}")


if __name__ == "__main__":
    main()
