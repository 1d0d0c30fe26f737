"""The scheduler: gives each pending task a ready node.

Spread as swarmkit does: the node with the fewest tasks of that service wins, then the one with
the fewest tasks in all, then the name, so 6 replicas on 3 nodes land 2/2/2. Tasks placed in the
same pass count toward the next choice. Global tasks come with their node already chosen.
A port published in host mode binds the node's own address: at most one task per node holds it.
A task on an encrypted network goes only to a node whose encryption is up (fail closed: a node
that cannot encrypt never carries such a network, and the task's error says why).
"""

from __future__ import annotations

import copy
from collections import Counter

from shoal.manager import encryption
from shoal.manager.allocator import status
from shoal.model.objects import TERMINAL, Obj
from shoal.store.base import BaseStore


def host_ports(svc: Obj | None) -> set[tuple[str, int]]:
    ports = (svc or {}).get("Endpoint", {}).get("Ports", [])
    return {(p["Protocol"], p["PublishedPort"]) for p in ports if p["PublishMode"] == "host"}


def encrypted_networks(task: Obj, networks: dict[str, Obj]) -> list[str]:
    """Names of the encrypted networks the task is attached to."""
    out = []
    for att in task.get("NetworksAttachments", []):
        net = networks.get(att["Network"]["ID"])
        if net is not None and "encrypted" in net["Spec"].get("DriverConfiguration", {}).get(
                "Options", {}):
            out.append(net["Spec"]["Name"])
    return out


def _no_node_why(ports: set[tuple[str, int]], encrypted: list[str], refused: dict[str, str],
                 nodes: dict[str, Obj]) -> str:
    if encrypted and refused:
        reasons = "; ".join(f"{nodes[n]['Description']['Hostname']}: {why}"
                            for n, why in sorted(refused.items()))
        return (f"no suitable node (encrypted network {', '.join(encrypted)}: encryption is "
                f"not up on {reasons})")
    if ports:
        return "no suitable node (host-mode port already in use on every node)"
    return "no suitable node"


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
        networks = {n["ID"]: n for n in self.store.peek("network")}
        cannot_encrypt = {n: why for n, node in nodes.items()
                          if (why := encryption.why_not(node))}
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
                encrypted = encrypted_networks(task, networks)
                refused = cannot_encrypt if encrypted else {}
                free = [n for n in nodes if not ports & bound[n] and n not in refused]
                node_id = task.get("NodeID")  # global tasks are bound to their node
                if node_id is None:
                    node_id = min(free, default=None, key=lambda n: (
                        per_service[(task["ServiceID"], n)], total[n],
                        nodes[n]["Description"]["Hostname"]))
                if node_id is None or node_id not in free:
                    if node_id is not None and node_id in refused:
                        refused = {node_id: refused[node_id]}  # a global task: its own node
                    why = _no_node_why(ports, encrypted, refused, nodes)
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
