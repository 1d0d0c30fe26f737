#!/usr/bin/env python3
"""Memory: manager and agent RSS/PSS on a 3-node lab, idle and with 100 services x 3 tasks
(`sleep 3600`), plus the API latency of the 100 creates and the time to all 300 running.

Run as root from the repository: `.venv/bin/python bench/memory.py [--services 100]`.
Builds lab "bmem" and removes it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.client import Client  # noqa: E402
from shoal.lab import Lab, lab_down, lab_up, pid_of  # noqa: E402

LAB = "bmem"
TIMEOUT = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def kib(pid: int, path: str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sample(lab: Lab) -> dict[str, tuple[int | None, int | None, float]]:
    """proc -> (RSS KiB, PSS KiB, CPU s)."""
    out = {}
    for proc in lab.procs:
        pid = pid_of(lab, proc)
        if pid is None:
            raise SystemExit(f"{proc} of lab {LAB} is not running")
        out[proc] = (kib(pid, "status", "VmRSS"), kib(pid, "smaps_rollup", "Pss"), cpu_s(pid))
    return out


def running(c: Client, want: int) -> bool:
    tasks = c.get("/tasks", filters=json.dumps({"desired-state": ["running"]}))
    return len(tasks) == want and all(t["Status"]["State"] == "running" for t in tasks)


def mib(k: int | None) -> str:
    return f"{k / 1024:8.1f}" if k is not None else f"{'-':>8}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--networks", type=int, default=4, help="services spread over this many")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds network namespaces")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally cleans up
    want = args.services * args.replicas
    lab_down(LAB)
    try:
        lab = lab_up(LAB, nodes=3)
        c = Client(lab.docker_host)
        for i in range(args.networks):
            c.request("POST", "/networks/create", {"Name": f"memnet{i}", "Driver": "overlay"})
        time.sleep(2)  # let start-up garbage settle
        idle = sample(lab)
        lat: list[float] = []
        t0 = time.monotonic()
        for i in range(args.services):
            spec = {"Name": f"mem{i}", "Mode": {"Replicated": {"Replicas": args.replicas}},
                    "TaskTemplate": {"ContainerSpec": {"Image": "bench",
                                                       "Args": ["sleep", "3600"]},
                                     "Networks": [{"Target": f"memnet{i % args.networks}"}]}}
            t = time.monotonic()
            c.request("POST", "/services/create", spec)
            lat.append(time.monotonic() - t)
        created = time.monotonic()
        while not running(c, want):
            if time.monotonic() - t0 > TIMEOUT:
                raise SystemExit(f"timed out after {TIMEOUT:g}s waiting for {want} running")
            time.sleep(0.1)
        done = time.monotonic()
        busy = sample(lab)
        time.sleep(2)
        loaded = sample(lab)
    finally:
        lab_down(LAB)
    q = statistics.quantiles(lat, n=100)
    k = min(10, len(lat))
    print(f"\nmemory, 3-node lab, {args.services} services x {args.replicas} tasks "
          f"(`sleep 3600`) on {args.networks} overlay networks; "
          f"nproc {os.cpu_count()}, kernel {os.uname().release}")
    print(f"create latency: p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms; first {k} median {statistics.median(lat[:k]) * 1000:.1f}"
          f" ms, last {k} median {statistics.median(lat[-k:]) * 1000:.1f} ms")
    print(f"{args.services} creates took {created - t0:.2f} s; all {want} running "
          f"{done - t0:.2f} s after the first create ({done - created:.2f} s after the last)")
    print(f"\n{'MiB':<9}{'idle RSS':>9}{'PSS':>9}{'loaded RSS':>11}{'PSS':>9}"
          f"{'delta RSS':>10}  CPU s (create -> all running)")
    for proc in lab.procs:
        (r0, p0, c0), (r1, p1, _), (_, _, c1) = idle[proc], loaded[proc], busy[proc]
        delta = mib(r1 - r0) if r0 is not None and r1 is not None else mib(None)
        print(f"{proc:<9}{mib(r0):>9}{mib(p0):>9}{mib(r1):>11}{mib(p1):>9}{delta:>10}"
              f"  {c1 - c0:6.2f}")


if __name__ == "__main__":
    main()
