#!/usr/bin/env python3
"""The VIP dataplane at 10, 1,000 and 10,000 services: first-packet latency and change cost.

    .venv/bin/python bench/lb_scale.py [--sizes 10,1000,10000 --tasks 3 --connects 10000
                                        --changes 100 --rounds 3]

No lab and no API: a synthetic NodeView (N services, each with a VIP and --tasks healthy
backends on one network, and one local task that sees them all) is programmed into a task-like
namespace `shoal-blbs-c` by shoal's own `shoal.dataplane.lb.LoadBalancer`, exactly as the agent
does (render -> script -> one libnftables transaction). Creating 10,000 services through the
API is not what is measured here, so it is skipped. A backend namespace `shoal-blbs-b`, joined
by a veth, answers every backend address at once (`ip route add local 10.128.0.0/9 dev lo`, one
listening socket on port 80 that accepts and counts the local address it was reached on).

Per size, printed:
- initial program: LoadBalancer.sync from nothing (Python index + script, then nft);
- first-packet latency: connect() from the task namespace to a random VIP, against connect() to
  a random backend address straight (same namespace, same conntrack, no DNAT), alternated one
  by one; p50/p99 of each and the ratio. Each socket is closed with a reset (no TIME_WAIT);
- one change: one random service's backends change (one removed, one added), LoadBalancer.sync
  of the new view after LoadBalancer.observe of the delta (as the agent does), split into nft
  (the transaction) and Python (index update + script of what the delta touched);
  p50/p99 over --changes changes. The agent's own view update before it (nv.apply_delta,
  which copies the changed section of the view) is timed apart and printed last.
Afterwards the backend's counts must show no connection reached a VIP address un-NATed, and
the last changed service's new backend must have been reached.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.dataplane import lb as lbmod  # noqa: E402
from shoal.dataplane import namespaces  # noqa: E402
from shoal.dataplane.nft import Nft  # noqa: E402
from shoal.model import view as nv  # noqa: E402

CLIENT, BACKEND = "shoal-blbs-c", "shoal-blbs-b"
NET = "bnet"
TASK = "client"
LINGER_RST = struct.pack("ii", 1, 0)

# Accepts forever; counts the local address of every connection; prints the counts at EOF on
# stdin. Runs in the backend namespace, in its own process (no GIL shared with the timing).
BACKEND_SERVER = r"""
import collections, json, selectors, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 80))
srv.listen(4096)
srv.setblocking(False)
seen = collections.Counter()
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            print(json.dumps(seen), flush=True)
            sys.exit(0)
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                break
            try:
                seen[conn.getsockname()[0]] += 1
            except OSError:
                pass
            conn.close()
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def make_namespaces() -> None:
    drop_namespaces()
    ip("netns", "add", CLIENT)
    ip("netns", "add", BACKEND)
    ip("-n", CLIENT, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", BACKEND)
    for ns, addr in ((CLIENT, "10.0.0.1/30"), (BACKEND, "10.0.0.2/30")):
        ip("-n", ns, "addr", "add", addr, "dev", "eth0")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", CLIENT, "route", "add", "10.128.0.0/9", "via", "10.0.0.2")  # VIPs and backends
    ip("-n", BACKEND, "route", "add", "local", "10.128.0.0/9", "dev", "lo")  # answers them all


def drop_namespaces() -> None:
    for ns in (CLIENT, BACKEND):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in out.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- the synthetic view ----------------------------------------------------------------------

def addr(n: int) -> str:
    """The n-th address of 10.128.0.0/9 (+2: .0 and .1 are not handed out)."""
    n += (10 << 24 | 128 << 16) + 2
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def endpoint(tid: str, sid: str, ip_: str) -> nv.EndpointEntry:
    return {"id": tid, "name": tid, "service_id": sid, "node_id": "bnode", "state": "running",
            "healthy": True, "addrs": {NET: {"ip": ip_, "prefixlen": 9, "mac": ""}}}


def synthetic_view(services: int, tasks: int) -> nv.NodeView:
    view = nv.empty_view({"id": "bnode", "name": "bnode", "addr": "198.18.0.11",
                          "ingress_addr": ""})
    view["revision"] = 1
    view["networks"][NET] = {"id": NET, "name": NET, "subnet": "10.128.0.0/9",
                             "gateway": "10.128.0.1", "vni": 4200, "internal": False,
                             "encrypted": False, "ingress": False}
    n = 0
    for s in range(services):
        sid = f"svc{s:05d}"
        view["services"][sid] = {"id": sid, "name": sid, "endpoint_mode": "vip",
                                 "vips": {NET: addr(n)}, "aliases": {NET: []}, "ports": [],
                                 "labels": {}}
        n += 1
        for t in range(tasks):
            tid = f"{sid}x{t}"
            view["endpoints"][tid] = endpoint(tid, sid, addr(n))
            n += 1
    view["tasks"][TASK] = {"id": TASK, "name": "client.1", "service_id": "c", "slot": 1,
                           "service_name": "client", "desired_state": "running",
                           "image": "local", "command": ["true"], "env": [], "dir": "",
                           "dns": {"nameservers": [], "search": [], "options": []},
                           "healthcheck": None, "stop_grace": 10.0,
                           "addrs": {NET: {"ip": "10.0.0.1", "prefixlen": 30, "mac": ""}}}
    return view


# --- timing ------------------------------------------------------------------------------------

class TimedNft(Nft):
    """shoal's Nft, recording how long each transaction takes."""

    times: ClassVar[list[float]] = []

    def run(self, script: str) -> str:
        t0 = time.perf_counter()
        try:
            return super().run(script)
        finally:
            TimedNft.times.append(time.perf_counter() - t0)


def connect_times(pairs: list[tuple[str, str]]) -> tuple[list[float], list[float]]:
    """connect() durations to each VIP and each direct address, one after the other, from a
    thread inside the client namespace (its sockets live there)."""
    fd = namespaces.open_fd(CLIENT)
    assert fd is not None

    def run() -> tuple[list[float], list[float]]:
        namespaces.enter(fd)
        vip_t: list[float] = []
        direct_t: list[float] = []
        clock = time.perf_counter_ns
        for i, (vip, direct) in enumerate(pairs):
            for target, out in (((vip, vip_t), (direct, direct_t)) if i % 2 == 0
                                else ((direct, direct_t), (vip, vip_t))):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(2.0)
                t0 = clock()
                s.connect((target, 80))
                out.append((clock() - t0) / 1e3)  # microseconds
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                s.close()
        return vip_t, direct_t

    try:
        return namespaces.in_thread(run)
    finally:
        os.close(fd)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def one_size(n: int, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    make_namespaces()
    server = subprocess.Popen(["ip", "netns", "exec", BACKEND, sys.executable, "-c",
                               BACKEND_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    lb = lbmod.LoadBalancer()
    try:
        assert server.stdout is not None and server.stdin is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the backend server did not start")
        view = synthetic_view(n, args.tasks)
        vips = [s["vips"][NET] for s in view["services"].values()]
        backends = [e["addrs"][NET]["ip"] for e in view["endpoints"].values()]
        TimedNft.times.clear()
        t0 = time.perf_counter()
        lb.sync(view, {TASK: CLIENT})
        initial = time.perf_counter() - t0
        initial_nft = sum(TimedNft.times)
        rules = Nft(CLIENT)
        try:
            listing = rules.run(f"list table {lbmod.TABLE}")
        finally:
            rules.close()
        chains = listing.count("\tchain ")
        log(f"{n} services: programmed in {initial:.3f} s ({chains} chains in the table)")

        # Changes: one service loses a backend and gains a new one.
        total: list[float] = []
        nft_t: list[float] = []
        view_t: list[float] = []
        current = view
        last: tuple[str, str, str] = ("", "", "")
        for i in range(args.changes):
            sid = f"svc{rng.randrange(n):05d}"
            mine = sorted(k for k, e in current["endpoints"].items() if e["service_id"] == sid)
            gone = rng.choice(mine)
            removed = current["endpoints"][gone]["addrs"][NET]["ip"]
            added = f"10.200.{i // 250}.{i % 250 + 2}"
            # What the manager sends the agent, and the view the agent makes of it.
            delta = {"endpoints": {"set": {f"new{i}": endpoint(f"new{i}", sid, added)},
                                   "del": [gone]}, "revision": current["revision"] + 1}
            t0 = time.perf_counter()
            new = nv.apply_delta(current, delta)
            view_t.append(time.perf_counter() - t0)
            TimedNft.times.clear()
            t0 = time.perf_counter()
            lb.observe(delta)
            changed = lb.sync(new, {TASK: CLIENT})
            total.append(time.perf_counter() - t0)
            nft_t.append(sum(TimedNft.times))
            assert changed == 1 and len(TimedNft.times) == 1
            current = new
            last = (new["services"][sid]["vips"][NET], removed, added)

        # The floor of any transaction on this table: add and remove an element of `dead`.
        probe = Nft(CLIENT)
        floor = []
        try:
            for _ in range(20):
                t0 = time.perf_counter()
                probe.run(f"add element {lbmod.TABLE} dead {{ 10.255.255.254 }}\n"
                          f"delete element {lbmod.TABLE} dead {{ 10.255.255.254 }}\n")
                floor.append(time.perf_counter() - t0)
        finally:
            probe.close()

        # First packet: random VIPs against random backends, alternated.
        pairs = [(rng.choice(vips), rng.choice(backends)) for _ in range(args.connects)]
        connect_times(pairs[: min(500, len(pairs))])  # warm up (ARP, caches)
        vip_t, direct_t = connect_times(pairs)
        # The last changed VIP reaches its new backend (1 in 3 per connect; direct connects
        # here go to an original backend, never to a 10.200.x.x one).
        connect_times([(last[0], backends[0])] * 40)

        server.stdin.close()
        seen: dict[str, int] = json.loads(server.stdout.readline())
        leaked = sum(seen.get(v, 0) for v in set(vips))
        if leaked:
            raise SystemExit(f"{leaked} connections reached a VIP un-NATed")
        if not seen.get(last[2]):
            raise SystemExit(f"the new backend {last[2]} of VIP {last[0]} was never reached")
        return {"n": n, "chains": chains, "initial": initial, "initial_nft": initial_nft,
                "vip": vip_t, "direct": direct_t, "change": total, "change_nft": nft_t,
                "floor": floor, "view": view_t}
    finally:
        lb.close()
        if server.poll() is None:
            server.kill()
        server.wait()
        drop_namespaces()


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size over several rounds: samples pooled, one-off times by their median."""
    out: dict[str, Any] = {"n": runs[0]["n"], "chains": runs[0]["chains"]}
    for key in ("initial", "initial_nft"):
        out[key] = statistics.median(r[key] for r in runs)
    for key in ("vip", "direct", "change", "change_nft", "floor", "view"):
        out[key] = [x for r in runs for x in r[key]]
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nnproc {os.cpu_count()}, kernel {os.uname().release}, load average {load}; "
          f"{args.tasks} backends per service; per size and round {args.connects} connects "
          f"each way, {args.changes} changes; {args.rounds} rounds (sizes in alternating order)")
    print(f"\n{'services':>8} {'initial s':>9} {'(nft s)':>8} | {'VIP p50':>7} {'p99 us':>7} | "
          f"{'direct p50':>10} {'p99 us':>7} | {'ratio p50':>9} {'p99':>5} | "
          f"{'change p50':>10} {'p99 ms':>7} | {'nft p50':>7} {'p99 ms':>7} | {'floor ms':>8}")
    for r in results:
        v50, v99 = pct(r["vip"], 50), pct(r["vip"], 99)
        d50, d99 = pct(r["direct"], 50), pct(r["direct"], 99)
        print(f"{r['n']:>8} {r['initial']:9.3f} {r['initial_nft']:8.3f} | {v50:7.1f} {v99:7.1f}"
              f" | {d50:10.1f} {d99:7.1f} | {v50 / d50:8.2f}x {v99 / d99:4.2f}x | "
              f"{pct(r['change'], 50) * 1e3:10.2f} {pct(r['change'], 99) * 1e3:7.2f} | "
              f"{pct(r['change_nft'], 50) * 1e3:7.2f} {pct(r['change_nft'], 99) * 1e3:7.2f} | "
              f"{pct(r['floor'], 50) * 1e3:8.2f}")
    print("(connect() in microseconds, timed from Python: read the VIP/direct ratio and the "
          "shape across sizes; change = LoadBalancer.sync of one changed service, nft = its "
          "libnftables transaction; floor = a transaction that only adds and removes one "
          "element of `dead`)")
    for r in results:
        py = 1 - sum(r["change_nft"]) / sum(r["change"])
        print(f"{r['n']:>8} services: change mean {statistics.mean(r['change']) * 1e3:.2f} ms, "
              f"of which Python (index + script) {py:.0%}; before it, the agent's "
              f"nv.apply_delta p50 {pct(r['view'], 50) * 1e3:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--tasks", type=int, default=3, help="backends per service")
    ap.add_argument("--connects", type=int, default=10000, help="per target kind, per size")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds network namespaces")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally cleans up
    lbmod.Nft = TimedNft  # type: ignore[misc]  # LoadBalancer makes its contexts through this
    rng = random.Random(args.seed)
    sizes = [int(x) for x in args.sizes.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    try:
        for r in range(args.rounds):
            for n in sizes if r % 2 == 0 else sizes[::-1]:
                runs[n].append(one_size(n, args, rng))
    finally:
        drop_namespaces()
    report([merge(runs[n]) for n in sizes], args)


if __name__ == "__main__":
    main()
