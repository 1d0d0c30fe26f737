"""The nft text of the VIP table: pure functions from (before, after) to one transaction.

Every name is declared here once. The layout keeps the number of chains and sets fixed, so that
a change is element updates on named maps (see lb.py for why that makes its cost flat):

    table ip shoal
      map backends   VIP . slot -> task address, typeof ip daddr . numgen random mod 1
      set dead       VIPs with no healthy task
      chain nat_output   one rule per backend count N in use:
                         dnat to ip daddr . numgen random mod N offset first_slot(N) map @backends

A VIP with N backends holds the slots first_slot(N) .. first_slot(N) + N - 1. The ranges of
different N never overlap, so a VIP misses the lookup of every rule but its own (a map miss ends
the rule, the next one runs) and `numgen` is drawn over exactly its N backends.
"""

from __future__ import annotations

TABLE = "ip shoal"
BACKENDS = "backends"
DEAD = "dead"
INGRESS_MARKS = "ingress_marks"
NAT_CHAIN = "nat_output"

VipTable = dict[str, tuple[str, ...]]  # VIP -> healthy backend addresses (sorted); () = dead
Marks = dict[str, int]  # a node's ingress MAC -> the mark of connections it forwarded

SKELETON = f"""table {TABLE} {{}}
delete table {TABLE}
table {TABLE} {{
    map {BACKENDS} {{ typeof ip daddr . numgen random mod 1 : ip daddr; }}
    set {DEAD} {{ type ipv4_addr; }}
    chain {NAT_CHAIN} {{
        type nat hook output priority -100; policy accept;
    }}
    chain filter_output {{
        type filter hook output priority 0; policy accept;
        ip daddr @{DEAD} meta l4proto tcp reject with tcp reset
        ip daddr @{DEAD} reject
    }}
    map {INGRESS_MARKS} {{ type ether_addr : mark; }}
    chain steer_in {{
        type filter hook prerouting priority -150; policy accept;
        ct state new ct mark set ether saddr map @{INGRESS_MARKS}
    }}
    chain steer_out {{
        type route hook output priority -150; policy accept;
        ct mark != 0 meta mark set ct mark
    }}
}}
"""


def first_slot(n: int) -> int:
    """Where the slots of a VIP with n backends start: 0, 1, 3, 6, ... (disjoint per n)."""
    return n * (n - 1) // 2


def slots(vip: str, backends: tuple[str, ...]) -> dict[str, str]:
    """The `backends` map keys of one VIP, each with its task address."""
    base = first_slot(len(backends))
    return {f"{vip} . {base + i}": addr for i, addr in enumerate(backends)}


def pick_rule(n: int) -> str:
    return (f"add rule {TABLE} {NAT_CHAIN} dnat to ip daddr . numgen random mod {n} "
            f"offset {first_slot(n)} map @{BACKENDS}\n")


class Transaction:
    """Element changes gathered per set, printed as one delete and one add command each.

    Deletes come first, so a key can be deleted and added again in one transaction (a backend
    replaced in its slot). One command per set, not one per element: the parser's cost is per
    command, and a first program holds every VIP at once."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.delete: dict[str, list[str]] = {}
        self.add: dict[str, list[str]] = {}

    def delete_element(self, name: str, key: str) -> None:
        self.delete.setdefault(name, []).append(key)

    def add_element(self, name: str, element: str) -> None:
        self.add.setdefault(name, []).append(element)

    def text(self) -> str:
        out = list(self.rules)
        out += [f"delete element {TABLE} {name} {{ {', '.join(keys)} }}\n"
                for name, keys in self.delete.items()]
        out += [f"add element {TABLE} {name} {{ {', '.join(elements)} }}\n"
                for name, elements in self.add.items()]
        return "".join(out)


def change_vip(tx: Transaction, vip: str, before: tuple[str, ...] | None,
               after: tuple[str, ...] | None) -> None:
    """One VIP from before to after (None: absent, (): dead); only the slots that differ."""
    if before == after:
        return
    old = slots(vip, before) if before else {}
    new = slots(vip, after) if after else {}
    for key, addr in old.items():
        if new.get(key) != addr:
            tx.delete_element(BACKENDS, key)
    for key, addr in new.items():
        if old.get(key) != addr:
            tx.add_element(BACKENDS, f"{key} : {addr}")
    was_dead, is_dead = before == (), after == ()
    if was_dead and not is_dead:
        tx.delete_element(DEAD, vip)
    if is_dead and not was_dead:
        tx.add_element(DEAD, vip)


def change_marks(tx: Transaction, old: Marks, new: Marks) -> None:
    for mac in sorted(old):
        if old[mac] != new.get(mac):
            tx.delete_element(INGRESS_MARKS, mac)
    for mac, mark in sorted(new.items()):
        if old.get(mac) != mark:
            tx.add_element(INGRESS_MARKS, f"{mac} : {mark:#x}")


def add_pick_rules(tx: Transaction, have: set[int], table: VipTable) -> set[int]:
    """Rules for the backend counts table uses that have none yet; returns the counts added.
    A rule stays once made: at most one per count ever used, and a count with no VIP costs
    one missed lookup on a connection's first packet."""
    need = {len(b) for b in table.values() if b} - have
    tx.rules += [pick_rule(n) for n in sorted(need)]
    return need


def script(old: VipTable | None, new: VipTable) -> str:
    """The whole transaction from old to new; old None means the table is not there yet.
    (The agent builds its transactions VIP by VIP from a delta; this is the full-diff form.)"""
    tx = Transaction()
    add_pick_rules(tx, set() if old is None else {len(b) for b in old.values() if b}, new)
    before = old or {}
    for vip in sorted(before.keys() - new.keys()):
        change_vip(tx, vip, before[vip], None)
    for vip in sorted(new):
        change_vip(tx, vip, before.get(vip), new[vip])
    return (SKELETON if old is None else "") + tx.text()
