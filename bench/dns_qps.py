"""Cluster names: shoal's resolver vs dnsmasq, same names, same query file, one namespace.

    .venv/bin/python bench/dns_qps.py [--services 100 --tasks 10 --seconds 5 --rounds 3]

A task-like namespace `shoal-bdnsq` (lo up). The real resolver process (`python -m shoal.dns`,
uvloop, and once more on the default asyncio loop), in a node-like namespace `shoal-bdnsn`, is
fed a synthetic view of S services x T tasks and attaches the task-like namespace: UDP+TCP on
127.0.0.11:53 inside it, exactly as for a task.
dnsmasq serves the same names from a hosts file on 127.0.0.12:53 in the same namespace. dnsperf
runs inside the namespace against each in turn, rounds interleaved (A B A B ...) so that drift on
a shared machine hits both alike; the table shows medians and the ratio to dnsmasq.
Throughput: unlimited rate, 100 queries outstanding, and the server's CPU time per query over
that run (from /proc: steadier than qps on a shared machine). Latency: a fixed rate (--rate),
every query's latency from dnsperf -v, p50/p99/p99.9.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from dns_common import (
    ResolverProc,
    dnsmasq,
    dnsperf,
    hosts_lines,
    load,
    log,
    median,
    netns,
    synthetic_view,
    wait_answer,
)

NS = "shoal-bdnsq"  # the task-like namespace the queries come from
NODE_NS = "shoal-bdnsn"  # the resolver's "node": no route anywhere, so nothing can leave


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=int, default=5000, help="qps of the latency runs")
    args = p.parse_args()

    view = synthetic_view(args.services, args.tasks)
    with tempfile.TemporaryDirectory(prefix="shoal-bdnsq-") as tmp, netns(NS), netns(NODE_NS):
        hosts = Path(tmp) / "hosts"
        hosts.write_text("\n".join(hosts_lines(view)) + "\n")
        names = [s["name"] for s in view["services"].values()]
        names += [f"tasks.{n}" for n in names] + [e["name"] for e in view["endpoints"].values()]
        random.Random(1).shuffle(names)
        queries = Path(tmp) / "queries"
        queries.write_text("".join(f"{n} A\n" for n in names))
        log(f"{len(names)} names; query file {queries}")
        results: dict[str, dict[str, list[float]]] = {}
        with dnsmasq(NS, "127.0.0.12", hosts) as dm:
            for loop in ("uvloop", "asyncio"):
                with ResolverProc("--loop", loop, "--upstream", "192.0.2.1",
                                  netns_name=NODE_NS) as res:
                    res.send({"op": "view", "view": view})
                    res.call({"op": "attach", "task_id": "client", "netns": NS})
                    wait_answer(NS, "127.0.0.11", names[0])
                    # Warm up both: the resolver builds each answer on its first ask.
                    for server in ("127.0.0.11", "127.0.0.12"):
                        dnsperf(NS, server, queries, 1, rate=20000)
                    servers = [(f"shoal ({loop})", "127.0.0.11", res.proc.pid),
                               ("dnsmasq", "127.0.0.12", dm.pid)]
                    rounds = args.rounds if loop == "uvloop" else 1
                    for r in range(rounds):
                        for label, server, pid in servers:
                            if label == "dnsmasq" and loop != "uvloop":
                                continue
                            used = cpu_seconds(pid)
                            tput = dnsperf(NS, server, queries, args.seconds)
                            used = cpu_seconds(pid) - used
                            tput["cpu_us"] = used / (tput["qps"] * args.seconds) * 1e6
                            lat = dnsperf(NS, server, queries, args.seconds, rate=args.rate,
                                          verbose=True)
                            log(f"round {r + 1} {label}: {tput['qps']:.0f} qps, "
                                f"lost {tput['lost']}; at {args.rate} qps p50 "
                                f"{lat['p50'] * 1e6:.0f} us p99 {lat['p99'] * 1e6:.0f} us")
                            row = results.setdefault(label, {})
                            for key, value in (("qps", tput["qps"]), ("cpu", tput["cpu_us"]),
                                               ("p50", lat["p50"]),
                                               ("p99", lat["p99"]), ("p999", lat["p999"])):
                                row.setdefault(key, []).append(value)
                    stats = res.call({"op": "stats"})
                    log(f"resolver ({loop}) RSS {stats['rss'] / 2**20:.1f} MiB")
            print(f"\nload average at the end: {load()}")
            print(f"\n{len(names)} names ({args.services} services x {args.tasks} tasks), "
                  f"{args.seconds:g} s per run, {args.rounds} interleaved rounds, medians")
            print(f"{'server':<20} {'qps':>9} {'x dnsmasq':>10} {'CPU us/q':>9} {'p50 us':>8} "
                  f"{'p99 us':>8} {'p99.9 us':>9}")
            base = median(results["dnsmasq"]["qps"])
            for label, row in results.items():
                print(f"{label:<20} {median(row['qps']):>9.0f} "
                      f"{median(row['qps']) / base:>10.2f} {median(row['cpu']):>9.1f} "
                      f"{median(row['p50']) * 1e6:>8.0f} "
                      f"{median(row['p99']) * 1e6:>8.0f} {median(row['p999']) * 1e6:>9.0f}")
            pairs = [a / b for a, b in zip(results["shoal (uvloop)"]["qps"],
                                           results["dnsmasq"]["qps"], strict=True)]
            print("qps ratio per round (shoal uvloop / dnsmasq, adjacent runs): "
                  + " ".join(f"{r:.2f}" for r in pairs) + f"; median {median(pairs):.2f}")


if __name__ == "__main__":
    main()
