"""The scheduler: gives each pending task a ready node.

Spread as swarmkit does: the node with the fewest tasks of that service wins, then the one with
the fewest tasks in all, then the name, so 6 replicas on 3 nodes land 2/2/2. Tasks placed in the
same pass count toward the next choice. Global tasks come with their node already chosen.
A port published in host mode binds the node's own address: at most one task per node holds it.
"""

from __future__ import annotations

import copy
from collections import Counter

from shoal.manager.allocator import status
from shoal.model.objects import TERMINAL, Obj
from shoal.store.base import BaseStore


def host_ports(svc: Obj | None) -> set[tuple[str, int]]:
    ports = (svc or {}).get("Endpoint", {}).get("Ports", [])
    return {(p["Protocol"], p["PublishedPort"]) for p in ports if p["PublishMode"] == "host"}


def eligible(node: Obj) -> bool:
    return node["Status"]["State"] == "ready" and node["Spec"]["Availability"] == "active"


class Scheduler:
    def __init__(self, store: BaseStore) -> None:
        self.store = store

    def tick(self) -> None:
        pending = [t for t in self.store.peek("task") if t["Status"]["State"] == "pending"]
        if not pending:
            return
        nodes = {n["ID"]: n for n in self.store.peek("node") if eligible(n)}
        total: Counter[str] = Counter()
        per_service: Counter[tuple[str, str]] = Counter()
        services = {s["ID"]: s for s in self.store.peek("service")}
        bound: dict[str, set[tuple[str, int]]] = {n: set() for n in nodes}  # host ports in use
        for task in self.store.peek("task"):
            node_id = task.get("NodeID")
            if node_id and task["Status"]["State"] not in TERMINAL:
                total[node_id] += 1
                per_service[(task["ServiceID"], node_id)] += 1
                bound.setdefault(node_id, set()).update(
                    host_ports(services.get(task["ServiceID"])))
        with self.store.tx() as tx:
            for task in sorted(pending, key=lambda t: (t["ServiceID"], t.get("Slot", 0))):
                task = copy.deepcopy(task)
                if task["DesiredState"] != "running":
                    task["Status"] = status("rejected", "removed before it was scheduled")
                    tx.update("task", task)
                    continue
                ports = host_ports(services.get(task["ServiceID"]))
                free = [n for n in nodes if not ports & bound[n]]
                node_id = task.get("NodeID")  # global tasks are bound to their node
                if node_id is None:
                    node_id = min(free, default=None, key=lambda n: (
                        per_service[(task["ServiceID"], n)], total[n],
                        nodes[n]["Description"]["Hostname"]))
                if node_id is None or node_id not in free:
                    why = "no suitable node" if not ports else \
                        "no suitable node (host-mode port already in use on every node)"
                    if task["Status"].get("Err") != why:
                        task["Status"] = status("pending", "pending task scheduling", why)
                        tx.update("task", task)
                    continue
                task["NodeID"] = node_id
                task["Status"] = status("assigned", "scheduler assigned task to node")
                tx.update("task", task)
                total[node_id] += 1
                per_service[(task["ServiceID"], node_id)] += 1
                bound[node_id] |= ports
