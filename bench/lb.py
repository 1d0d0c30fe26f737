#!/usr/bin/env python3
"""Service VIPs and the ingress routing mesh against the direct paths, in one 3-node lab run.

    .venv/bin/python bench/lb.py [--seconds 5 --rounds 3 --threads 2 --connections 64]

Lab "blb", overlay network `lbnet`. One backend task `web` (nginx-light answering a fixed 200
from one worker, plus `iperf3 -s`), published in ingress mode (8080 -> 80, 5201 -> 5201), and two
client tasks (`sleep`). The scheduler is made to put web and one client on the same node and the
other client on a second node, leaving the third node with no task at all (its agent is
stopped while the services are created, then started again). Targets, each measured with
wrk keep-alive (rps, p99), wrk `Connection: close` (new connections per second, p99) and
iperf3 (one TCP stream):

    vip/same      client task on web's node   -> web's VIP      (DNAT in the client's namespace)
    direct/same   client task on web's node   -> web's lbnet address (bridge, no VXLAN)
    vip/other     client task on another node -> web's VIP      (DNAT, then VXLAN)
    direct/other  client task on another node -> web's lbnet address (VXLAN)
    mesh          ext -> the node with no task : published port -> ingress VXLAN -> web
    local         ext -> web's node : published port -> web over the node's ingress bridge

ext cannot reach task addresses (they live on the overlay), so the mesh is compared with the
same ext client on the node that holds the task (`local`) and with a client task reaching the
task over the overlay (`direct/other`). Every target and mode runs --rounds times, interleaved
(the order reversed every other round). Printed: medians, the CPU time of the client tool and
of web's processes per request or per GB (steadier than rps on a shared machine), and ratios
a/b, each the median over rounds of a/b within one round. Nothing leaves the machine: lab
addresses only; every wrk or iperf3 run is bounded by --seconds.

Source ports: two targets of one client namespace reach web on the same 4-tuple (vip and
direct; mesh and local), but the client's TCP timestamps have a different random offset per
destination address (VIP, task, node). web's TIME_WAIT sockets from one target then reject
SYNs of the other by PAWS, and those connections wait for a 1 s SYN retransmit. So each target
gets its own slice of the client namespace's ip_local_port_range (`--shared-ports` turns this
off to show the effect); the SYN retransmits each target saw are printed.
Needs wrk, iperf3 and nginx (`apt-get install -y --no-install-recommends nginx-light`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.client import Client  # noqa: E402
from shoal.lab import Lab, lab_down, lab_up, start_agent, stop_agent  # noqa: E402

LAB = "blb"
NET = "lbnet"
HTTP_PORT, IPERF_PORT, PUBLISHED = 80, 5201, 8080
MODES = ("keepalive", "close", "iperf3")

NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {port} backlog=4096 reuseport;
        location / {{ return 200 "hello, vip!\\n"; }}
    }}
}}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def wait(what: str, test: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = test()
        if got:
            return got
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


# --- the lab ---------------------------------------------------------------------------------

def running(c: Client, name: str, n: int) -> list[dict] | None:
    ts = c.get("/tasks", filters=json.dumps({"service": [name], "desired-state": ["running"]}))
    up = [t for t in ts if t["Status"]["State"] == "running"]
    return up if len(up) == n == len(ts) else None


def node_state(c: Client, hostname: str) -> str:
    node = next(n for n in c.get("/nodes") if n["Description"]["Hostname"] == hostname)
    return str(node["Status"]["State"])


def net_addr(task: dict) -> str:
    return next(a["Addresses"][0] for a in task["NetworksAttachments"]
                if a["Network"]["Spec"]["Name"] == NET).split("/")[0]


@dataclass
class Target:
    name: str
    netns: str  # where the client runs
    host: str
    http_port: int
    iperf_port: int
    path: str  # what the packets go through
    server_ns: str = ""  # web's namespace, whose processes' CPU time is counted
    ports: str = ""  # its slice of the client's ip_local_port_range, "" for all of it


PORTS = (32768, 60999)  # the kernel's default ip_local_port_range


def split_ports(targets: list[Target]) -> None:
    """Give the targets of each client namespace disjoint source port ranges."""
    by_ns: dict[str, list[Target]] = {}
    for t in targets:
        by_ns.setdefault(t.netns, []).append(t)
    for group in by_ns.values():
        width = (PORTS[1] - PORTS[0] + 1) // len(group)
        for i, t in enumerate(group):
            t.ports = f"{PORTS[0] + i * width} {PORTS[0] + (i + 1) * width - 1}"


def use_ports(t: Target) -> None:
    rng = t.ports or f"{PORTS[0]} {PORTS[1]}"
    out = sh(["ip", "netns", "exec", t.netns, "sysctl", "-qw",
              f"net.ipv4.ip_local_port_range={rng}"])
    if out.returncode != 0:
        raise SystemExit(f"sysctl in {t.netns}: {out.stderr.strip()}")


def syn_retrans(netns: str) -> int:
    """TcpExt TCPSynRetrans of a namespace (/proc/net/netstat as seen from inside it)."""
    lines = sh(["ip", "netns", "exec", netns, "cat", "/proc/net/netstat"]).stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split(), vals.split(), strict=True))["TCPSynRetrans"])
    return 0


def build(lab: Lab, c: Client, conf: Path) -> list[Target]:
    c.request("POST", "/networks/create", {"Name": NET, "Driver": "overlay"})
    empty = lab.nodes[2]
    # With node3 down, web goes to node1 (fewest tasks, then name) and the two clients to
    # node2 (no task yet) and node1: node3 is left with no task at all.
    stop_agent(lab, empty)
    wait(f"{empty.name} down", lambda: node_state(c, empty.name) != "ready")
    web_cmd = (f"iperf3 -s -p {IPERF_PORT} >/dev/null 2>&1 & "
               f"exec nginx -c {conf}")
    c.request("POST", "/services/create", {
        "Name": "web", "Mode": {"Replicated": {"Replicas": 1}},
        "TaskTemplate": {"ContainerSpec": {"Image": "nginx", "Args": ["sh", "-c", web_cmd]},
                         "Networks": [{"Target": NET}]},
        "EndpointSpec": {"Ports": [{"TargetPort": HTTP_PORT, "PublishedPort": PUBLISHED},
                                   {"TargetPort": IPERF_PORT, "PublishedPort": IPERF_PORT}]}})
    [web] = wait("web running", lambda: running(c, "web", 1))
    c.request("POST", "/services/create", {
        "Name": "client", "Mode": {"Replicated": {"Replicas": 2}},
        "TaskTemplate": {"ContainerSpec": {"Image": "local", "Args": ["sleep", "infinity"]},
                         "Networks": [{"Target": NET}]}})
    clients = wait("clients running", lambda: running(c, "client", 2))
    start_agent(lab, empty)
    wait(f"{empty.name} ready", lambda: node_state(c, empty.name) == "ready")

    hostname = {n["ID"]: n["Description"]["Hostname"] for n in c.get("/nodes")}
    web_node = lab.node(hostname[web["NodeID"]])
    same = [t for t in clients if t["NodeID"] == web["NodeID"]]
    other = [t for t in clients if t["NodeID"] != web["NodeID"]]
    if not same or not other or empty.name in {hostname[t["NodeID"]] for t in [web, *clients]}:
        raise SystemExit("placement is not web+client / client / nothing: "
                         + ", ".join(f"{t['ID'][:6]}@{hostname[t['NodeID']]}"
                                     for t in [web, *clients]))
    svc = c.find("service", "web")
    net_id = c.find("network", NET)["Id"]
    vip = next(v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]
               if v["NetworkID"] == net_id).split("/")[0]
    direct = net_addr(web)
    ns_same = same[0]["Status"]["ContainerStatus"]["ContainerID"]
    ns_other = other[0]["Status"]["ContainerStatus"]["ContainerID"]
    on = f"{web_node.name}"
    off = hostname[other[0]["NodeID"]]
    targets = [
        Target("vip/same", ns_same, vip, HTTP_PORT, IPERF_PORT,
               f"client task on {on} -> VIP {vip} -> web on {on}"),
        Target("direct/same", ns_same, direct, HTTP_PORT, IPERF_PORT,
               f"client task on {on} -> {direct} (web on {on}, bridge)"),
        Target("vip/other", ns_other, vip, HTTP_PORT, IPERF_PORT,
               f"client task on {off} -> VIP {vip} -> web on {on} (VXLAN)"),
        Target("direct/other", ns_other, direct, HTTP_PORT, IPERF_PORT,
               f"client task on {off} -> {direct} (web on {on}, VXLAN)"),
        Target("mesh", lab.ext_netns, empty.addr, PUBLISHED, IPERF_PORT,
               f"ext -> {empty.name} {empty.addr}:{PUBLISHED} (no task) -> ingress VXLAN "
               f"-> web on {on}"),
        Target("local", lab.ext_netns, web_node.addr, PUBLISHED, IPERF_PORT,
               f"ext -> {on} {web_node.addr}:{PUBLISHED} -> web on {on} (ingress bridge)"),
    ]
    for t in targets:
        t.server_ns = web["Status"]["ContainerStatus"]["ContainerID"]
    return targets


# --- the tools ---------------------------------------------------------------------------------

def answers(t: Target) -> bool:
    out = sh(["ip", "netns", "exec", t.netns, "curl", "-s", "--max-time", "2",
              f"http://{t.host}:{t.http_port}/"], timeout=10)
    return out.returncode == 0 and out.stdout.startswith("hello")


def seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def wrk(t: Target, secs: int, threads: int, conns: int, close: bool) -> tuple[float, float]:
    argv = ["ip", "netns", "exec", t.netns, "wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s",
            "--latency", f"http://{t.host}:{t.http_port}/"]
    if close:
        argv[-1:-1] = ["-H", "Connection: close"]
    out = sh(argv, timeout=secs + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    if rps is None or p99 is None:
        raise SystemExit(f"wrk against {t.name}: no figures in {out!r}")
    bad = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    if bad:
        log(f"  {t.name}: wrk reported {bad.group(0)}")
    return float(rps.group(1)), seconds(p99.group(1), p99.group(2))


def iperf3(t: Target, secs: int) -> float:
    """Bits per second received, one TCP stream; the server serves one test at a time."""
    argv = ["ip", "netns", "exec", t.netns, "iperf3", "-c", t.host, "-p", str(t.iperf_port),
            "-t", str(secs), "-J"]
    for _ in range(20):
        out = sh(argv, timeout=secs + 30)
        try:
            data = json.loads(out.stdout)
        except json.JSONDecodeError:
            data = {"error": out.stderr or out.stdout}
        if "error" not in data:
            return float(data["end"]["sum_received"]["bits_per_second"])
        time.sleep(0.5)  # "the server is busy": the previous test is still closing
    raise SystemExit(f"iperf3 against {t.name}: {data['error']}")


@dataclass
class Sample:
    value: float  # requests or connections per second; bits per second for iperf3
    p99: float  # seconds (wrk only)
    cpu: float  # CPU seconds of the client tool and of web's processes, per request or per GB
    rtx: int  # SYN retransmits in the client namespace during the run


def ns_cpu(netns: str) -> float:
    """utime + stime of every process in a namespace, in seconds."""
    total = 0
    for pid in sh(["ip", "netns", "pids", netns]).stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def measure(t: Target, mode: str, args: argparse.Namespace) -> Sample:
    use_ports(t)
    rtx = syn_retrans(t.netns)
    cpu = children_cpu() + ns_cpu(t.server_ns)
    if mode == "iperf3":
        value, p99 = iperf3(t, args.seconds), float("nan")
        work = value * args.seconds / 8e9  # GB moved
    else:
        value, p99 = wrk(t, args.seconds, args.threads, args.connections, close=mode == "close")
        work = value * args.seconds  # requests
    cpu = children_cpu() + ns_cpu(t.server_ns) - cpu
    return Sample(value, p99, cpu / work, syn_retrans(t.netns) - rtx)


# --- the report --------------------------------------------------------------------------------

def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


Results = dict[tuple[str, str], list[Sample]]


def report(targets: list[Target], res: Results, args: argparse.Namespace) -> None:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nnproc {os.cpu_count()}, kernel {os.uname().release}, load average {load}; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, iperf3 -t "
          f"{args.seconds} (1 stream); medians of {args.rounds} interleaved rounds")
    for t in targets:
        print(f"  {t.name:<13} {t.path}")

    def m(name: str, mode: str, field: str) -> float:
        return med([getattr(s, field) for s in res.get((name, mode), [])])

    print(f"\n{'target':<13} {'ka rps':>7} {'p99 ms':>6} {'us/req':>6} | {'new c/s':>7} "
          f"{'p99 ms':>6} {'us/req':>6} | {'iperf3 Gb/s':>11} {'CPU s/GB':>8} | "
          f"{'SYN rtx':>7}  ports")
    for t in targets:
        rtx = sum(s.rtx for mode in MODES for s in res.get((t.name, mode), []))
        print(f"{t.name:<13} {m(t.name, 'keepalive', 'value'):7.0f} "
              f"{m(t.name, 'keepalive', 'p99') * 1e3:6.2f} "
              f"{m(t.name, 'keepalive', 'cpu') * 1e6:6.1f} | {m(t.name, 'close', 'value'):7.0f} "
              f"{m(t.name, 'close', 'p99') * 1e3:6.2f} {m(t.name, 'close', 'cpu') * 1e6:6.1f} | "
              f"{m(t.name, 'iperf3', 'value') / 1e9:11.2f} {m(t.name, 'iperf3', 'cpu'):8.3f} | "
              f"{rtx:7d}  {t.ports or 'all'}")
    print("(us/req, s/GB: CPU time of the client tool and of web's processes per unit of work, "
          "the kernel's packet work included; SYN rtx: SYN retransmits in the client namespace "
          "over all its runs; wrk's p99 counts from the request, so a 1 s SYN retransmit shows "
          "in c/s, not in p99)")

    def paired(a: str, b: str, mode: str, field: str) -> float:
        return med([getattr(x, field) / getattr(y, field)
                    for x, y in zip(res[(a, mode)], res[(b, mode)], strict=True)])

    names = {t.name for t in targets}
    pairs = [("vip/same", "direct/same"), ("vip/other", "direct/other"),
             ("mesh", "local"), ("mesh", "direct/other"), ("local", "direct/other")]
    cols = [("keepalive", "value"), ("keepalive", "p99"), ("keepalive", "cpu"),
            ("close", "value"), ("close", "p99"), ("close", "cpu"),
            ("iperf3", "value"), ("iperf3", "cpu")]
    print(f"\n{'ratio a / b':<27} {'ka rps':>7} {'p99':>6} {'CPU':>6} | {'new c/s':>7} "
          f"{'p99':>6} {'CPU':>6} | {'iperf3':>7} {'CPU':>6}")
    for a, b in pairs:
        if a in names and b in names:
            x = [paired(a, b, mode, field) for mode, field in cols]
            print(f"{a + ' / ' + b:<27} {x[0]:6.2f}x {x[1]:5.2f}x {x[2]:5.2f}x | {x[3]:6.2f}x "
                  f"{x[4]:5.2f}x {x[5]:5.2f}x | {x[6]:6.2f}x {x[7]:5.2f}x")
    print("(each ratio: the median over rounds of a/b within one round, where a and b ran one "
          "after the other; rps, c/s, Gb/s: higher is better, goal >= 0.95x for a VIP, >= 0.8x "
          "for the mesh; p99 and CPU per unit of work: lower is better)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="per wrk or iperf3 run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--only", choices=("all", "vip", "mesh"), default="all")
    ap.add_argument("--shared-ports", action="store_true",
                    help="all targets of a client share its whole source port range")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds a lab of network namespaces")
    for tool in ("wrk", "iperf3", "nginx", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (nginx: apt-get install -y "
                             "--no-install-recommends nginx-light)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally cleans up
    tmp = Path(tempfile.mkdtemp(prefix="shoal-blb-"))
    os.chmod(tmp, 0o755)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=args.nginx_workers, dir=tmp, port=HTTP_PORT))
    res: Results = {}
    lab_down(LAB)
    try:
        lab = lab_up(LAB, nodes=3)
        c = Client(lab.docker_host)
        targets = build(lab, c, conf)
        drop = {"all": set(), "vip": {"mesh", "local"}, "mesh": {"vip/same", "direct/same"}}
        targets = [t for t in targets if t.name not in drop[args.only]]
        if not args.shared_ports:
            split_ports(targets)
        for t in targets:
            use_ports(t)
            wait(f"{t.name} answers", lambda t=t: answers(t), timeout=30)
            wrk(t, 1, args.threads, args.connections, close=False)  # warm up
        log("lab up, every target answers")
        for r in range(args.rounds):
            for mode in MODES:
                order = targets if r % 2 == 0 else targets[::-1]
                for t in order:
                    res.setdefault((t.name, mode), []).append(measure(t, mode, args))
                log(f"round {r + 1}/{args.rounds} {mode}: " + ", ".join(
                    f"{t.name} {res[(t.name, mode)][-1].value:.4g}" for t in targets))
    finally:
        lab_down(LAB)
        shutil.rmtree(tmp, ignore_errors=True)
    report(targets, res, args)


if __name__ == "__main__":
    main()
