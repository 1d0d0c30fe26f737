#!/usr/bin/env python3
"""Encrypted overlay throughput against raw wireguard-go and an unencrypted overlay, one run.

    flock /tmp/shoal-bench.lock .venv/bin/python bench/wireguard.py [--seconds 5 --rounds 3]

Lab "bwg" (2 nodes). Three paths from node1's namespace side to node2's, each measured with
iperf3 (one TCP stream, --seconds long), interleaved over --rounds (order reversed every other
round, so drift hits all three):

    encrypted   client task on node1 -> server task on node2, network `encnet` (--opt
                encrypted): veth -> bridge -> VXLAN (port 4790, between tunnel addresses) ->
                shoal's wireguard-go -> underlay -> wireguard-go -> VXLAN -> bridge -> veth
    raw-wg      node1's namespace -> node2's namespace over a second, bench-made wireguard-go
                pair (interfaces bwgraw1/bwgraw2, 10.99.0.1-2/24, MTU 1420, no VXLAN, no
                bridge, no task namespace): what wireguard-go itself does on this machine
    raw-wg-tuned  the same with a third pair (bwgtun1/2, 10.98.0.0/24) given what the agent
                gives its own wireguard-go: RPS on the interface and 4 MiB socket buffers
                (docs/encryption.md); the like-for-like reference
    plain       client task on node1 -> server task on node2, network `plainnet`: VXLAN over
                the underlay, no encryption (the ceiling)

Printed: per path the median bits per second and the CPU seconds per GB moved (the client's,
the server's and every wireguard-go's), and the ratios to raw-wg, raw-wg-tuned (goal >= 0.9
for encrypted against both) and plain, each the median over rounds of the ratio within one
round.

The lab's nodes are closed (`--closed-node`): the node filter drops UDP from peers except the
cluster's own ports. The raw pair gets through the way any two UDP peers behind stateful
filters do (hole punching): both ends send to each other (persistent keepalive), and once
each side's conntrack has seen its own packet out, the other side's packet is a reply
(`ct state established`). shoal's filter is not touched. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from shoal.client import Client  # noqa: E402
from shoal.dataplane import wg_uapi  # noqa: E402
from shoal.dataplane.wireguard import (  # noqa: E402
    cpu_mask,
    enlarge_udp_buffers,
    private_hex,
    public_b64,
    uapi_exchange,
)
from shoal.lab import Lab, lab_down, lab_up  # noqa: E402

LAB = "bwg"
IPERF_PORT = 5201
RAW = {"raw-wg": ("bwgraw", 51900, "10.99.0", False),  # name, port, net, tuned
       "raw-wg-tuned": ("bwgtun", 51901, "10.98.0", True)}
PATHS = ("encrypted", "raw-wg", "raw-wg-tuned", "plain")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(argv: list[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def wait_for(what: str, test, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = test()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def service(name: str, net: str) -> dict:
    return {"Name": name, "Mode": {"Replicated": {"Replicas": 2}}, "TaskTemplate": {
        "ContainerSpec": {"Image": "iperf3", "Command": ["iperf3", "-s", "-p", str(IPERF_PORT)]},
        "Networks": [{"Target": net}]}}


def tasks_by_node(c: Client, svc: str) -> dict[str, dict] | None:
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in c.get("/nodes")}
    tasks = [t for t in c.get("/tasks", filters=json.dumps({"service": [svc]}))
             if t["Status"]["State"] == "running"]
    by = {nodes[t["NodeID"]]: t for t in tasks}
    return by if set(by) == {"node1", "node2"} else None


# --- the raw wireguard-go pair ---


def uapi(ifname: str, text: str) -> str:
    return uapi_exchange(ifname, text.encode())


def start_raw_pair(lab: Lab, name: str, port: int, net: str,
                   tuned: bool) -> list[subprocess.Popen]:
    """Two bench-made wireguard-go interfaces {name}1/{name}2 in node1's and node2's
    namespaces, {net}.1-2/24. `tuned`: with what shoal's agent does to its own (RPS on the
    interface, 4 MiB socket buffers), so that the comparison is like for like."""
    procs = []
    keys = [X25519PrivateKey.generate() for _ in (1, 2)]
    for i in (1, 2):
        ifname, ns = f"{name}{i}", lab.node(i).netns
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        procs.append(subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--",
                                       "wireguard-go", "-f", ifname], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(f"{ifname}'s socket", lambda f=ifname: Path(
            f"/var/run/wireguard/{f}.sock").exists(), 10)
    for i in (1, 2):
        ifname, ns, other = f"{name}{i}", lab.node(i).netns, 3 - i
        peer_pub = wg_uapi.b64_to_hex(public_b64(keys[other - 1]))
        dev = wg_uapi.Device(private_hex(keys[i - 1]), port, {peer_pub: wg_uapi.Peer(
            peer_pub, f"{lab.node(other).addr}:{port}", (f"{net}.{other}/32",))})
        text = wg_uapi.render_set(None, dev).replace(
            "replace_allowed_ips", "persistent_keepalive_interval=1\nreplace_allowed_ips")
        assert "errno=0" in uapi(ifname, text), f"configuring {ifname}"
        sh(["ip", "-n", ns, "addr", "add", f"{net}.{i}/24", "dev", ifname], check=True)
        sh(["ip", "-n", ns, "link", "set", ifname, "mtu", "1420", "up"], check=True)
        if tuned:
            sh(["ip", "netns", "exec", ns, "sh", "-c", f"echo {cpu_mask(os.cpu_count() or 1)}"
                f" > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"], check=True)
            enlarge_udp_buffers(procs[i - 1].pid, port)
    # Both ends keep sending (keepalive 1 s) until a handshake gets through both filters.
    wait_for(f"the {name} pair's handshake", lambda: wg_uapi.parse_get(uapi(
        f"{name}1", "get=1\n\n")).peers and all(
        p.last_handshake for p in wg_uapi.parse_get(uapi(f"{name}1", "get=1\n\n"))
        .peers.values()), 30)
    return procs


# --- measuring ---


def wg_cpu() -> float:
    """utime + stime of every wireguard-go process on the machine that belongs to this lab's
    namespaces (shoal's and the raw pair), in seconds."""
    total = 0
    for pid in sh(["pgrep", "-x", "wireguard-go"]).stdout.split():
        try:
            netns = os.readlink(f"/proc/{pid}/ns/net")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if netns in _LAB_NETNS:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


_LAB_NETNS: set[str] = set()


def iperf3(client_ns: str, host: str, secs: int) -> tuple[float, float]:
    """(bits per second received, CPU seconds of client and server per the run's report)."""
    argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", host, "-p", str(IPERF_PORT),
            "-t", str(secs), "-J"]
    data: dict = {}
    for _ in range(20):
        out = sh(argv, timeout=secs + 30)
        try:
            data = json.loads(out.stdout)
        except json.JSONDecodeError:
            data = {"error": out.stderr or out.stdout}
        if "error" not in data:
            bps = float(data["end"]["sum_received"]["bits_per_second"])
            cpu = data["end"]["cpu_utilization_percent"]
            # percent of one CPU over the run -> CPU seconds
            return bps, (cpu["host_total"] + cpu["remote_total"]) / 100 * secs
        time.sleep(0.5)
    raise SystemExit(f"iperf3 to {host}: {data.get('error')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds a lab of namespaces")
    raw: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    try:
        log(f"lab {LAB} up (2 nodes)")
        lab = lab_up(LAB, nodes=2)
        for n in lab.nodes:
            _LAB_NETNS.add(_netns_id(n.netns))
        c = Client(lab.docker_host)
        for net, opts in (("encnet", {"encrypted": ""}), ("plainnet", {})):
            c.request("POST", "/networks/create", {"Name": net, "Driver": "overlay",
                                                   "Options": opts})
        c.request("POST", "/services/create", service("encsrv", "encnet"))
        c.request("POST", "/services/create", service("plainsrv", "plainnet"))
        enc = wait_for("encsrv on both nodes", lambda: tasks_by_node(c, "encsrv"))
        plain = wait_for("plainsrv on both nodes", lambda: tasks_by_node(c, "plainsrv"))
        server_ns = lab.node(2).netns
        for name, port, net, tuned in RAW.values():
            raw += start_raw_pair(lab, name, port, net, tuned)
            raw.append(subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s",
                                         "-p", str(IPERF_PORT), "-B", f"{net}.2"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def addr(t: dict) -> str:
            return t["NetworksAttachments"][0]["Addresses"][0].split("/")[0]

        targets = {
            "encrypted": (enc["node1"]["Status"]["ContainerStatus"]["ContainerID"],
                          addr(enc["node2"])),
            **{path: (lab.node(1).netns, f"{net}.2") for path, (_, _, net, _) in RAW.items()},
            "plain": (plain["node1"]["Status"]["ContainerStatus"]["ContainerID"],
                      addr(plain["node2"])),
        }
        time.sleep(1)  # the iperf3 servers are listening
        results: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        for rnd in range(args.rounds):
            order = PATHS if rnd % 2 == 0 else tuple(reversed(PATHS))
            for path in order:
                ns, host = targets[path]
                before = wg_cpu()
                bps, cpu = iperf3(ns, host, args.seconds)
                cpu += wg_cpu() - before
                gb = bps * args.seconds / 8e9
                results[path].append((bps, cpu / gb))
                log(f"round {rnd + 1} {path:9s} {bps / 1e9:6.2f} Gbit/s  "
                    f"{cpu / gb:5.2f} CPU s/GB")
        print(f"\niperf3, one TCP stream, {args.seconds} s x {args.rounds} rounds "
              "(medians)\n")
        print("| path | Gbit/s | CPU s per GB | / raw-wg | / raw-wg-tuned | / plain |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")

        def ratio(path: str, base: str) -> float:
            return statistics.median(a[0] / b[0] for a, b in
                                     zip(results[path], results[base], strict=True))

        for path in PATHS:
            print(f"| {path} | {statistics.median(r[0] for r in results[path]) / 1e9:.2f} | "
                  f"{statistics.median(r[1] for r in results[path]):.2f} | "
                  f"{ratio(path, 'raw-wg'):.2f}x | {ratio(path, 'raw-wg-tuned'):.2f}x | "
                  f"{ratio(path, 'plain'):.2f}x |")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for proc in raw:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log(f"lab {LAB} down")
        lab_down(LAB)
        signal.signal(signal.SIGTERM, previous)
    return 0


def _netns_id(netns: str) -> str:
    """The net:[inode] link that /proc/<pid>/ns/net of a process in `netns` reads as."""
    return f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"


if __name__ == "__main__":
    sys.exit(main())
