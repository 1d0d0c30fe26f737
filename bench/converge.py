#!/usr/bin/env python3
"""Convergence: service create (30 replicas) -> all running, scale 30 -> 5 and 5 -> 30, on a
3-node lab, against the same raw work without shoal (namespaces, veths, `ip netns exec`).

Run as root from the repository: `.venv/bin/python bench/converge.py [--reps 5] [--http]`.
Builds lab "bconv" (and raw namespaces "shoal-bconvr-*"), removes both at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.client import Client  # noqa: E402
from shoal.lab import lab_down, lab_up  # noqa: E402

LAB = "bconv"
RAW = "shoal-bconvr-"  # raw reference namespaces: prefix of lab "bconvr", so never shoal's
TIMEOUT = 60.0


def tasks_of(c: Client, svc: str) -> list[dict]:
    return c.get("/tasks", filters=json.dumps({"service": [svc]}))


def converged(c: Client, svc: str, n: int) -> bool:
    """Exactly n tasks exist for the service (the others deleted), all running."""
    ts = tasks_of(c, svc)
    return len(ts) == n and all(t["Status"]["State"] == "running" for t in ts)


def wait(what: str, test: Callable[[], bool], t0: float, every: float) -> float:
    while not test():
        if time.monotonic() - t0 > TIMEOUT:
            raise SystemExit(f"timed out after {TIMEOUT:g}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def scale(c: Client, svc: str, n: int) -> float:
    spec = c.find("service", svc)
    spec["Spec"]["Mode"]["Replicated"]["Replicas"] = n
    c.request("POST", f"/services/{svc}/update", spec["Spec"],
              query={"version": spec["Version"]["Index"]})
    return time.monotonic()


def shoal_rep(c: Client, argv: list[str], n: int, low: int, poll: float) -> list[float]:
    spec = {"Name": "conv", "Mode": {"Replicated": {"Replicas": n}},
            "TaskTemplate": {"ContainerSpec": {"Image": "bench", "Args": argv},
                             "Networks": [{"Target": "benchnet"}]}}
    svc = c.request("POST", "/services/create", spec)["ID"]
    t0 = time.monotonic()
    out = [wait(f"{n} running", lambda: converged(c, svc, n), t0, poll)]
    t1 = scale(c, svc, low)
    out.append(wait(f"{low} running", lambda: converged(c, svc, low), t1, poll))
    # The API forgets a task once its process is stopped; its namespace goes a moment later.
    out.append(wait(f"{low} task namespaces", lambda: len(task_netns()) == low, t1, poll))
    out.append(wait(f"{n} running", lambda: converged(c, svc, n), scale(c, svc, n), poll))
    c.request("DELETE", f"/services/{svc}")
    wait("tasks gone", lambda: not c.get("/tasks"), time.monotonic(), 0.1)
    wait("task namespaces gone", lambda: not task_netns(), time.monotonic(), 0.1)
    return out


def netns(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


def task_netns() -> list[str]:
    """The lab's task namespaces: all of its namespaces but the switch, ext and the nodes."""
    pre = f"shoal-{LAB}-"
    return [n for n in netns(pre) if n[len(pre):] not in ("sw", "ext")
            and not n[len(pre):].startswith("node")]


def ip(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *args], input=stdin, text=True, check=True, capture_output=True)


def raw_task(node: int, i: int, argv: list[str], procs: list[subprocess.Popen]) -> None:
    """What an agent does for one task, with iproute2: namespace, veth into the node's bridge,
    MAC, address, links up, then the process through `ip netns exec`."""
    ns, nodens = f"{RAW}t{node}x{i}", f"{RAW}n{node}"
    ip("netns", "add", ns)
    ip("-n", nodens, "-b", "-", stdin=f"link add h{i} type veth peer name eth0 netns {ns}\n"
                                       f"link set h{i} master br0 up\n")
    ip("-n", ns, "-b", "-", stdin=f"link set eth0 address 02:42:0a:00:{node:02x}:{i + 2:02x}\n"
                                  f"addr add 10.0.{node}.{i + 2}/16 dev eth0\n"
                                  "link set eth0 up\nlink set lo up\n")
    procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))


def raw_rep(argv: list[str], n: int, nodes: int, parallel: bool) -> float:
    procs: list[subprocess.Popen] = []
    for node in range(1, nodes + 1):
        ip("netns", "add", f"{RAW}n{node}")
        ip("-n", f"{RAW}n{node}", "-b", "-", stdin="link add br0 type bridge\n"
                                                   "link set br0 up\nlink set lo up\n")
    try:
        work = [[(node, i) for i in range(n) if i % nodes == node - 1]
                for node in range(1, nodes + 1)]
        t0 = time.monotonic()
        if parallel:  # one thread per node, as the 3 agents work side by side
            threads = [threading.Thread(target=lambda w=w: [raw_task(*t, argv, procs) for t in w])
                       for w in work]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        else:
            for node, i in sorted((t for w in work for t in w), key=lambda t: t[1]):
                raw_task(node, i, argv, procs)
        return time.monotonic() - t0
    finally:
        raw_cleanup(procs)


def raw_cleanup(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    for name in netns(RAW):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def row(label: str, xs: list[float], ref: float | None = None) -> str:
    med = statistics.median(xs)
    ratio = f"{med / ref:6.1f}x" if ref else ""
    return f"{label:<38} {med:7.3f} {max(xs):7.3f}  {ratio}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=30)
    ap.add_argument("--low", type=int, default=5, help="scale down to this many")
    ap.add_argument("--poll", type=float, default=0.02, help="GET /tasks period, seconds")
    ap.add_argument("--http", action="store_true",
                    help="tasks run `python3 -m http.server 80` instead of `sleep 3600`")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds network namespaces")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally cleans up
    argv = ["python3", "-m", "http.server", "80"] if args.http else ["sleep", "3600"]
    n, reps = args.replicas, args.reps
    raw_seq: list[float] = []
    raw_par: list[float] = []
    runs: list[list[float]] = []
    lab_down(LAB)
    try:
        lab = lab_up(LAB, nodes=3)
        c = Client(lab.docker_host)
        c.request("POST", "/networks/create", {"Name": "benchnet", "Driver": "overlay"})
        for rep in range(reps):  # interleaved, so that drift hits both sides alike
            runs.append(shoal_rep(c, argv, n, args.low, args.poll))
            raw_seq.append(raw_rep(argv, n, 3, parallel=False))
            raw_par.append(raw_rep(argv, n, 3, parallel=True))
            print(f"rep {rep + 1}/{reps}: shoal " + " ".join(f"{x:.3f}" for x in runs[-1])
                  + f"  raw {raw_seq[-1]:.3f} {raw_par[-1]:.3f}", file=sys.stderr)
    finally:
        raw_cleanup([])
        lab_down(LAB)
    ref = statistics.median(raw_par)
    print(f"\nconvergence, 3-node lab, {n} x `{' '.join(argv)}`, {reps} reps, "
          f"poll {args.poll * 1000:g} ms; nproc {os.cpu_count()}, kernel {os.uname().release}")
    print(f"{'':<38} {'median':>7} {'max':>7}  vs raw 3x{n // 3} parallel")
    print(row(f"shoal: create {n} -> all running", [r[0] for r in runs], ref))
    print(row(f"shoal: scale {n} -> {args.low} (others gone)", [r[1] for r in runs], ref))
    print(row("  ... and their namespaces gone", [r[2] for r in runs], ref))
    print(row(f"shoal: scale {args.low} -> {n}", [r[3] for r in runs], ref))
    print(row(f"raw: {n} netns+veth+exec, sequential", raw_seq, ref))
    print(row(f"raw: 3 nodes x {n // 3} in parallel", raw_par, ref))


if __name__ == "__main__":
    main()
