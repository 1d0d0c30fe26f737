"""The orchestrator: keeps each service's tasks matching its spec.

Replicated services get one live task per slot 1..N; global services one per ready node. A live
task whose process ended is replaced by the restart policy after its delay; a task whose spec
is older than the service's is replaced; slots beyond N are told to go (DesiredState "remove")
and are deleted once the agent has stopped them. History is kept per slot up to the cluster's
TaskHistoryRetentionLimit, as Docker does.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable

from shoal.manager import updates
from shoal.model.objects import TERMINAL, Obj, new_id, now
from shoal.model.spec import DEFAULT_RESTART_DELAY_NS, replicas
from shoal.store.base import BaseStore, Event, Transaction

HISTORY_LIMIT = 5


def is_live(task: Obj) -> bool:
    """Meant to run: its desired state is still running."""
    return task["DesiredState"] == "running"


def new_task(svc: Obj, slot: int | None, node_id: str | None) -> Obj:
    ts = now()
    task: Obj = {
        "ID": new_id(), "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
        "Labels": {}, "Spec": copy.deepcopy(svc["Spec"]["TaskTemplate"]),
        "ServiceID": svc["ID"], "Status": {"Timestamp": ts, "State": "new", "Message": "created"},
        "DesiredState": "running",
    }
    if slot is not None:
        task["Slot"] = slot
    if node_id is not None:
        task["NodeID"] = node_id
    return task


class Orchestrator:
    def __init__(self, store: BaseStore, wake_at: Callable[[float], None]) -> None:
        self.store = store
        self.wake_at = wake_at  # asks the manager loop to run again at a monotonic time
        self.dirty: set[str] = {s["ID"] for s in store.peek("service")}
        self.dirty_orphans = True
        self.restart_at: dict[str, float] = {}  # failed task id -> when its replacement may start

    def observe(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kind == "service":
                self.dirty.add(ev.obj["ID"])
                if ev.action == "delete":
                    self.dirty_orphans = True
            elif ev.kind == "task":
                self.dirty.add(ev.obj["ServiceID"])
                if ev.obj["DesiredState"] == "remove":
                    self.dirty_orphans = True
            elif ev.kind == "node":
                # Global services follow the set of ready nodes; a node that went down has
                # its tasks run elsewhere.
                self.dirty.update(s["ID"] for s in self.store.peek("service")
                                  if "Global" in s["Spec"]["Mode"])
                self.dirty.update(t["ServiceID"] for t in self.store.peek("task")
                                  if t.get("NodeID") == ev.obj["ID"])

    def tick(self) -> None:
        if not self.dirty and not self.dirty_orphans:
            return
        dirty, self.dirty = self.dirty, set()
        by_service: dict[str, list[Obj]] = defaultdict(list)
        for task in self.store.peek("task"):
            if task["ServiceID"] in dirty or self.dirty_orphans:
                by_service[task["ServiceID"]].append(task)
        with self.store.tx() as tx:
            for service_id in dirty:
                svc = self.store.get("service", service_id)
                if svc is not None:
                    self._reconcile(tx, svc, by_service.get(service_id, []))
            if self.dirty_orphans:
                self._reap(tx, by_service)
            self.dirty_orphans = False

    def _reap(self, tx: Transaction, by_service: dict[str, list[Obj]]) -> None:
        """Delete tasks told to go once they are down, or never reached a node."""
        for tasks in by_service.values():
            for task in tasks:
                if task["DesiredState"] != "remove":
                    continue
                state = task["Status"]["State"]
                node = self.store.get("node", task.get("NodeID") or "")
                if state in TERMINAL or state in ("new", "pending") or node is None \
                        or node["Status"]["State"] != "ready":
                    tx.delete("task", task["ID"])

    def _reconcile(self, tx: Transaction, svc: Obj, tasks: list[Obj]) -> None:
        want = replicas(svc["Spec"])
        template = svc["Spec"]["TaskTemplate"]
        # Group by slot (global services: by node).
        groups: dict[object, list[Obj]] = defaultdict(list)
        for task in tasks:
            groups[task.get("Slot") or task.get("NodeID")].append(task)
        if want is None:
            keys: list[object] = [n["ID"] for n in self.store.peek("node")
                                  if n["Status"]["State"] == "ready"
                                  and n["Spec"]["Availability"] == "active"]
        else:
            keys = list(range(1, want + 1))
        wanted = set(keys)
        for key, group in groups.items():
            if key not in wanted:
                for task in group:
                    if task["DesiredState"] in ("running", "shutdown") \
                            and task["Status"]["State"] not in TERMINAL:
                        self._set_desired(tx, task, "remove")
                    elif task["Status"]["State"] in TERMINAL:
                        tx.delete("task", task["ID"])
        restart = template.get("RestartPolicy", {})
        delay = restart.get("Delay", DEFAULT_RESTART_DELAY_NS) / 1e9
        start_first = updates.config(svc).get("Order") == "start-first"
        pace = updates.progress(svc, groups, keys, time.time())
        if pace.status is not None:
            svc = copy.deepcopy(svc)
            svc["UpdateStatus"] = pace.status
            if pace.roll_back:  # FailureAction rollback: the previous tasks come back
                failed = copy.deepcopy(svc["Spec"])
                svc["Spec"]["TaskTemplate"] = copy.deepcopy(svc["PreviousSpec"]["TaskTemplate"])
                svc["PreviousSpec"] = failed  # as Docker: a rollback swaps the two
            tx.update("service", svc)
            if pace.roll_back:
                return  # the next pass reconciles against the restored template
        if pace.wait:
            self.wake_at(time.monotonic() + pace.wait)
            self.dirty.add(svc["ID"])
        budget = pace.budget
        nodes = {n["ID"]: n["Status"]["State"] for n in self.store.peek("node")}
        for key in keys:
            group = sorted(groups.get(key, []), key=lambda t: t["CreatedAt"])
            current, outdated = [], []
            for task in group:
                if not is_live(task):
                    continue
                if task["Status"]["State"] in TERMINAL:
                    self._set_desired(tx, task, "shutdown")
                    if self._should_restart(restart, task, group):
                        self.restart_at.setdefault(task["ID"], time.monotonic() + delay)
                elif task.get("NodeID") and nodes.get(task["NodeID"], "down") == "down":
                    # Its node is down or removed: run it elsewhere now (global tasks wait
                    # for their node).
                    if want is not None:
                        self._set_desired(tx, task, "shutdown")
                    else:
                        current.append(task)
                elif task["Spec"] != template:
                    outdated.append(task)
                else:
                    current.append(task)
            if outdated:
                if start_first:
                    # The new task first; the old one goes once the new one runs.
                    if any(t["Status"]["State"] == "running" for t in current):
                        for task in outdated:
                            self._set_desired(tx, task, "shutdown")
                    elif not current and budget > 0:
                        budget -= 1
                        self._add(tx, svc, key, want)
                    current = current or outdated
                elif budget > 0:
                    budget -= 1
                    for task in outdated:
                        self._set_desired(tx, task, "shutdown")  # replaced by _refill below
                else:
                    current = outdated + current  # its turn comes when a slot frees up
            for extra in current[1:]:
                self._set_desired(tx, extra, "remove")
            if not current:
                self._refill(tx, svc, key, want, group, restart, delay)
            self._trim_history(tx, group)

    def _refill(self, tx: Transaction, svc: Obj, key: object, want: int | None,
                group: list[Obj], restart: Obj, delay: float) -> None:
        """A slot with no live task: start one now, after the restart delay, or never."""
        candidates = [t for t in group if t["DesiredState"] != "remove"]
        latest = candidates[-1] if candidates else None
        if latest is None or latest["Spec"] != svc["Spec"]["TaskTemplate"] \
                or latest["Status"]["State"] not in TERMINAL:
            self._add(tx, svc, key, want)  # a new slot, an update, or the old task stopping
            return
        if latest["ID"] not in self.restart_at and not self._should_restart(restart, latest,
                                                                             group):
            return
        when = self.restart_at.setdefault(latest["ID"], time.monotonic() + delay)
        if time.monotonic() >= when:
            self.restart_at.pop(latest["ID"], None)
            self._add(tx, svc, key, want)
        else:
            self.wake_at(when)
            self.dirty.add(svc["ID"])

    def _add(self, tx: Transaction, svc: Obj, key: object, want: int | None) -> None:
        if want is None:
            tx.create("task", new_task(svc, None, str(key)))
        else:
            tx.create("task", new_task(svc, int(key), None))  # type: ignore[call-overload]

    @staticmethod
    def _should_restart(restart: Obj, task: Obj, group: list[Obj]) -> bool:
        condition = restart.get("Condition", "any")
        exit_code = task["Status"].get("ContainerStatus", {}).get("ExitCode", 0)
        if task["Status"]["State"] in ("shutdown", "remove", "orphaned"):
            return True  # stopped by shoal (node gone, agent restart): bring it back
        if condition == "none" or (condition == "on-failure" and exit_code == 0
                                   and task["Status"]["State"] == "complete"):
            return False
        attempts = restart.get("MaxAttempts") or 0
        failed = sum(1 for t in group if t["Status"]["State"] in ("failed", "complete"))
        return not attempts or failed <= attempts

    @staticmethod
    def _set_desired(tx: Transaction, task: Obj, desired: str) -> None:
        task = copy.deepcopy(task)
        task["DesiredState"] = desired
        tx.update("task", task)

    @staticmethod
    def _trim_history(tx: Transaction, group: list[Obj]) -> None:
        dead = [t for t in group if not is_live(t) and t["Status"]["State"] in TERMINAL]
        for task in dead[: max(0, len(group) - HISTORY_LIMIT)]:
            tx.delete("task", task["ID"])
