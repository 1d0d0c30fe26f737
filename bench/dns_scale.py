"""The resolver at 1,000 services x 10 tasks: memory, and how soon a change is answered.

    .venv/bin/python bench/dns_scale.py [--services 1000 --tasks 10 --changes 50]

The real resolver process (`python -m shoal.dns`, in a node-like namespace `shoal-bdnss-n`) is
fed a synthetic view over its control pipe, exactly as the agent feeds it, and attaches a
task-like namespace `shoal-bdnss-t`. Printed: resident memory empty and with the view, the
time to take the full view, then for each change (one task added to, or removed from, a random
service, sent as the agent sends a manager delta) the time from writing the delta to the pipe
until a UDP query from inside the task namespace gets the new `tasks.<service>` answer.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import socket
import time

import dns.message
from dns_common import ResolverProc, endpoint, load, log, netns, pct, synthetic_view, wait_answer

from shoal.dataplane import namespaces
from shoal.model import view as nv

NODE, TASK = "shoal-bdnss-n", "shoal-bdnss-t"


def socket_in(ns: str) -> socket.socket:
    fd = namespaces.open_fd(ns)
    assert fd is not None

    def make() -> socket.socket:
        namespaces.enter(fd)
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    try:
        return namespaces.in_thread(make)
    finally:
        os.close(fd)


def ask(sock: socket.socket, name: str) -> set[str]:
    q = dns.message.make_query(name, "A", use_edns=0, payload=4096)
    sock.send(q.to_wire())
    reply = dns.message.from_wire(sock.recv(65535))
    return {r.address for rrset in reply.answer for r in rrset}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--changes", type=int, default=50)
    args = p.parse_args()
    view = synthetic_view(args.services, args.tasks)
    size = len(json.dumps(view))
    rng = random.Random(7)
    with netns(NODE), netns(TASK):
        with ResolverProc("--upstream", "192.0.2.1", netns_name=NODE) as res:
            empty = res.call({"op": "stats"})["rss"]
            started = time.perf_counter()
            res.call({"op": "view", "view": view})
            took_view = time.perf_counter() - started
            res.call({"op": "attach", "task_id": "client", "netns": TASK})
            full = res.call({"op": "stats"})
            wait_answer(TASK, "127.0.0.11", "svc0")
            sock = socket_in(TASK)
            sock.settimeout(1.0)
            sock.connect(("127.0.0.11", 53))
            for s in range(0, args.services, max(1, args.services // 100)):
                ask(sock, f"tasks.svc{s}")  # build some answers, as a busy cluster would
            answered = res.call({"op": "stats"})
            times, applies = [], []
            current = view
            next_ip = 0
            for i in range(args.changes):
                s = rng.randrange(args.services)
                sid = f"svc{s:05d}"
                new = copy.deepcopy(current) if i == 0 else dict(current)
                new["endpoints"] = dict(current["endpoints"])
                mine = [e for e in new["endpoints"].values() if e["service_id"] == sid]
                if i % 2 == 0 or len(mine) <= 1:
                    tid = f"new{i:05d}"
                    ip = f"10.{200 + next_ip // 65536}.{next_ip // 256 % 256}.{next_ip % 256}"
                    next_ip += 1
                    new["endpoints"][tid] = endpoint(tid, f"svc{s}.{1000 + i}", sid, ip)
                else:
                    gone = rng.choice(mine)
                    del new["endpoints"][gone["id"]]
                new["revision"] = current["revision"] + 1
                want = {e["addrs"]["bnet"]["ip"] for e in new["endpoints"].values()
                        if e["service_id"] == sid and e["healthy"]}
                delta = nv.diff(current, new)  # type: ignore[arg-type]
                assert delta is not None
                started = time.perf_counter()
                res.send({"op": "delta", "delta": delta})
                while ask(sock, f"tasks.svc{s}") != want:
                    pass
                times.append(time.perf_counter() - started)
                applies.append(res.call({"op": "stats"})["last_change_seconds"])
                current = new
            sock.close()
    print(f"\nload average at the end: {load()}")
    print(f"\n{args.services} services x {args.tasks} tasks ({len(view['endpoints'])} "
          f"endpoints), view JSON {size / 2**20:.1f} MiB")
    print(f"resolver RSS: empty {empty / 2**20:.1f} MiB, with the view "
          f"{full['rss'] / 2**20:.1f} MiB, after {args.services // max(1, args.services // 100)}"
          f" answers built {answered['rss'] / 2**20:.1f} MiB")
    print(f"full view taken in {took_view * 1e3:.0f} ms (JSON parse and every name rendered)")
    print(f"one change -> answered, over {args.changes} changes: p50 "
          f"{pct(times, 50) * 1e3:.1f} ms, p99 {pct(times, 99) * 1e3:.1f} ms, max "
          f"{max(times) * 1e3:.1f} ms (of which rendering: p50 {pct(applies, 50) * 1e3:.1f} ms)")
    log("done")


if __name__ == "__main__":
    main()
