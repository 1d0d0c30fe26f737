#!/usr/bin/env python3
"""What one VIP change costs libnftables and the kernel, per ruleset layout, at N services.

    .venv/bin/python bench/lb_nft.py [--sizes 10,1000,10000,30000 --changes 50]

No traffic, no Python rendering: a table with N VIPs of 3 backends each is loaded into a scratch
namespace `shoal-blbn` through shoal's Nft (one libnftables context, as the agent keeps per task
namespace), then the median time of one transaction is taken for:

- chains: the layout before (a `vips` verdict map to a chain per VIP, each chain
  `dnat to numgen random mod 3 map { 0 : a, 1 : b, 2 : c }`, an anonymous map): a backend
  replaced = flush that chain and add its rule again. Skipped above 10,000 (its first load is
  quadratic: 10 s at 10,000).
- vmap: a verdict map VIP -> goto pick_<N> (one chain per backend count) and backends in a
  named map: the backend count of one VIP changes = its `vips` element replaced (goto element).
- slots: shoal's layout (lb_rules.py): backends in one named map keyed VIP . slot, one dnat rule
  per backend count; a backend replaced = one slot deleted and added again; the backend count
  changes = its 3 slots deleted and 2 others added.
- floor: add and remove one element of a plain set (the least a transaction can do).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.dataplane.lb_rules import SKELETON, pick_rule, slots  # noqa: E402
from shoal.dataplane.nft import Nft  # noqa: E402

NS = "shoal-blbn"
T = "ip shoal"


def addr(n: int) -> str:
    n += (10 << 24 | 128 << 16) + 2
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def vips(n: int) -> list[tuple[str, tuple[str, ...]]]:
    return [(addr(4 * i), tuple(addr(4 * i + 1 + j) for j in range(3))) for i in range(n)]


def chains_layout(table: list[tuple[str, tuple[str, ...]]]) -> str:
    out = [f"table {T} {{}}\ndelete table {T}\ntable {T} {{\n"
           "  map vips { type ipv4_addr : verdict; }\n  set dead { type ipv4_addr; }\n"
           "  chain nat_output { type nat hook output priority -100; policy accept;\n"
           "    ip daddr vmap @vips\n  }\n}\n"]
    for vip, b in table:
        chain = "vip_" + vip.replace(".", "_")
        out.append(f"add chain {T} {chain}\nadd rule {T} {chain} dnat to numgen random mod 3 "
                   f"map {{ 0 : {b[0]}, 1 : {b[1]}, 2 : {b[2]} }}\n"
                   f"add element {T} vips {{ {vip} : goto {chain} }}\n")
    return "".join(out)


def vmap_layout(table: list[tuple[str, tuple[str, ...]]]) -> str:
    out = [f"table {T} {{}}\ndelete table {T}\ntable {T} {{\n"
           "  map vips { type ipv4_addr : verdict; }\n  set dead { type ipv4_addr; }\n"
           "  map backends { typeof ip daddr . numgen random mod 1 : ip daddr; }\n"
           "  chain nat_output { type nat hook output priority -100; policy accept;\n"
           "    ip daddr vmap @vips\n  }\n"
           "  chain pick_2 {\n    dnat to ip daddr . numgen random mod 2 map @backends\n  }\n"
           "  chain pick_3 {\n    dnat to ip daddr . numgen random mod 3 map @backends\n  }\n}\n"]
    elements = [f"{vip} . {j} : {x}" for vip, b in table for j, x in enumerate(b)]
    out.append(f"add element {T} backends {{ {', '.join(elements)} }}\n")
    out.append(f"add element {T} vips {{ {', '.join(f'{v} : goto pick_3' for v, _ in table)} }}\n")
    return "".join(out)


def slots_layout(table: list[tuple[str, tuple[str, ...]]]) -> str:
    elements = [f"{k} : {a}" for vip, b in table for k, a in slots(vip, b).items()]
    return (SKELETON + pick_rule(2) + pick_rule(3)
            + f"add element {T} backends {{ {', '.join(elements)} }}\n")


def median_ms(nft: Nft, scripts: Callable[[int], str], changes: int) -> float:
    times = []
    for i in range(changes):
        text = scripts(i)
        t0 = time.perf_counter()
        nft.run(text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def one_size(n: int, changes: int) -> dict[str, float]:
    table = vips(n)
    vip, b = table[n // 2]
    row: dict[str, float] = {}
    nft = Nft(NS)
    try:
        if n <= 10000:
            t0 = time.perf_counter()
            nft.run(chains_layout(table))
            row["chains_load"] = time.perf_counter() - t0
            chain = "vip_" + vip.replace(".", "_")
            row["chains"] = median_ms(nft, lambda i: (
                f"flush chain {T} {chain}\nadd rule {T} {chain} dnat to numgen random "
                f"mod 3 map {{ 0 : {b[0]}, 1 : {b[1]}, 2 : 10.200.0.{i % 200 + 2} }}\n"),
                changes)
        nft.run(vmap_layout(table))
        row["vmap"] = median_ms(nft, lambda i: (
            f"delete element {T} vips {{ {vip} }}\n"
            f"add element {T} vips {{ {vip} : goto pick_{2 + i % 2} }}\n"), changes)
        t0 = time.perf_counter()
        nft.run(slots_layout(table))
        row["slots_load"] = time.perf_counter() - t0
        key = next(iter(slots(vip, b)))
        row["slots"] = median_ms(nft, lambda i: (
            f"delete element {T} backends {{ {key} }}\n"
            f"add element {T} backends {{ {key} : 10.200.0.{i % 200 + 2} }}\n"),
            changes)

        def count_change(i: int) -> str:
            a, z = (b, b[:2]) if i % 2 == 0 else (b[:2], b)
            old = ", ".join(slots(vip, a))
            new = ", ".join(f"{k} : {x}" for k, x in slots(vip, z).items())
            return (f"delete element {T} backends {{ {old} }}\n"
                    f"add element {T} backends {{ {new} }}\n")

        row["count"] = median_ms(nft, count_change, changes)
        row["floor"] = median_ms(nft, lambda i: (
            f"add element {T} dead {{ 10.255.255.254 }}\n"
            f"delete element {T} dead {{ 10.255.255.254 }}\n"), changes)
    finally:
        nft.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,10000,30000")
    ap.add_argument("--changes", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench makes a network namespace")
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        print(f"{'services':>8} | {'chains: replace':>15} {'load s':>7} | {'vmap: count':>11} | "
              f"{'slots: replace':>14} {'count':>6} {'load s':>7} | {'floor':>6}   (ms)")
        for n in (int(x) for x in args.sizes.split(",")):
            row = one_size(n, args.changes)
            chains = (f"{row['chains']:15.3f} {row['chains_load']:7.3f}" if "chains" in row
                      else f"{'-':>15} {'-':>7}")
            print(f"{n:>8} | {chains} | {row['vmap']:11.3f} | {row['slots']:14.3f} "
                  f"{row['count']:6.3f} {row['slots_load']:7.3f} | {row['floor']:6.3f}",
                  flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


if __name__ == "__main__":
    main()
