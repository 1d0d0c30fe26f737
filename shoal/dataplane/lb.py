"""Service VIPs, balanced in the kernel inside each task's own namespace.

Like Docker's IPVS-in-the-sandbox, every task namespace holds the load balancer for the VIPs it
can see, as one nftables table (names and text in lb_rules.py):

    table ip shoal
      map backends   VIP . slot -> task address        (all VIPs, all their healthy tasks)
      set dead       VIPs with no healthy task          (refused at once, never a hang)
      chain nat_output     nat output hook, one rule per backend count N in use:
                           dnat to ip daddr . numgen random mod N offset first_slot(N) map @backends
      chain filter_output  filter output hook: ip daddr @dead -> reject (tcp reset)
      map ingress_marks    ingress MAC of a node -> mark  (tasks on the ingress network)
      chain steer_in / steer_out    a connection a node forwarded is marked with that node,
                           and its packets routed back through it (plan.plan_reply_routes)

The choice is made on a connection's first packet in the caller's namespace, so conntrack in
that same namespace reverses it on the way back: no SNAT anywhere, and the backend sees the
caller's own address (which Docker's VIP path SNATs away, moby#39665). Every port is forwarded,
as Docker does for VIPs.

Why this shape: the number of chains and sets is fixed, whatever the number of services. A
change is element updates on named sets, which costs the same at 10 or 10,000 services, because
(1) libnftables refreshes its cache of every chain and set of the table before each command
that adds elements or rules (after any commit the generation has moved), so a chain or an
anonymous `numgen ... map { }` per VIP makes every transaction list O(services) objects; and
(2) the kernel re-validates every chain reachable from a verdict map whenever an element with a
`goto` is added (measured: 0.17 ms at 1,000 VIPs, 1.7 ms at 30,000), so VIPs do not go through
a verdict map to a chain per backend count either. bench/lb_nft.py measures both.

`render` is pure (view -> wanted state of one task); lb_index.VipIndex keeps that state for
every VIP from view deltas, so a change renders only the services it touched; `LoadBalancer`
programs the VIPs that changed through a libnftables context kept per task namespace.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from shoal.dataplane.lb_index import Changes, VipIndex
from shoal.dataplane.lb_rules import (
    SKELETON,
    TABLE,
    Marks,
    Transaction,
    VipTable,
    add_pick_rules,
    change_marks,
    change_vip,
)
from shoal.dataplane.nft import Nft
from shoal.dataplane.plan import plan_reply_routes
from shoal.model.view import NodeView, mac_for

log = logging.getLogger("shoal.dataplane.lb")

__all__ = ["TABLE", "LoadBalancer", "render", "render_marks"]


def render(view: NodeView, task_id: str) -> VipTable:
    """The VIPs one local task sees, each with its healthy backends on the VIP's network.
    The reference for what the delta-driven index must reach (it rebuilds one from view)."""
    task = view["tasks"].get(task_id)
    if task is None:
        return {}
    index = VipIndex()
    index.rebuild(view)
    return index.table(set(task["addrs"]))


def render_marks(view: NodeView, task_id: str) -> Marks:
    """For a task on the ingress network: every node's ingress MAC and its mark."""
    return {mac_for(r.gateway): r.mark for r in plan_reply_routes(view["tasks"][task_id], view)} \
        if task_id in view["tasks"] else {}


@dataclass
class TaskTable:
    """What one task namespace's table holds now."""

    nft: Nft
    networks: frozenset[str]
    vips: VipTable = field(default_factory=dict)
    counts: set[int] = field(default_factory=set)  # backend counts that have a pick rule
    marks: Marks = field(default_factory=dict)


class LoadBalancer:
    """Keeps the VIP table of every local task namespace matching the view.

    The agent hands it every view delta (`observe`) and says when a full snapshot replaced the
    view (`reset`); `sync` then programs only the VIPs those deltas changed, in the tasks whose
    networks hold them. A view it has no deltas for is compared in full (rebuild)."""

    def __init__(self) -> None:
        self._index = VipIndex()
        self._tasks: dict[str, TaskTable] = {}
        self._lock = threading.Lock()  # held while programming, which may take a while
        # Deltas not yet in the index. Its own lock: the event loop appends while a worker
        # thread programs.
        self._pending: list[dict[str, Any]] = []
        self._rebuild = True
        self._pending_lock = threading.Lock()
        # What the index moved since the last sync, for every task; None: compare in full.
        self._changes: Changes | None = None

    def observe(self, delta: dict[str, Any]) -> None:
        with self._pending_lock:
            self._pending.append(delta)

    def reset(self) -> None:
        """The view was replaced by a snapshot: the next sync rebuilds from it."""
        with self._pending_lock:
            self._pending.clear()
            self._rebuild = True

    def sync(self, view: NodeView, netns_of: dict[str, str]) -> int:
        """Program every task in netns_of (task id -> namespace); returns how many changed."""
        changed = 0
        with self._lock:
            self._catch_up(view)
            changes, self._changes = self._changes, {}
            for task_id in list(self._tasks):
                if task_id not in netns_of:
                    self._forget(task_id)
            for task_id, netns in netns_of.items():
                changed += self._program(view, task_id, netns, changes)
        return changed

    def program(self, view: NodeView, task_id: str, netns: str) -> bool:
        """One task's table, before its process starts: its first connection to a VIP must
        already be balanced. The changes it folds into the index stay for the next sync to
        bring to the other tasks."""
        with self._lock:
            self._catch_up(view)
            return self._program(view, task_id, netns, self._changes)

    def _catch_up(self, view: NodeView) -> None:
        """Bring the index to view's revision, adding the VIPs that moved to self._changes;
        None there if the index had to be rebuilt (every table is then compared in full)."""
        revision = view["revision"]
        with self._pending_lock:
            # Deltas newer than view arrived after it was taken: they wait for the next sync.
            ready = [d for d in self._pending if d.get("revision", revision) <= revision]
            self._pending = [d for d in self._pending if d.get("revision", revision) > revision]
            rebuild, self._rebuild = self._rebuild, False
        if not rebuild and self._index.revision is not None:
            for delta in ready:
                moved = self._index.apply(delta)
                if self._changes is not None:
                    for net, vips in moved.items():
                        self._changes.setdefault(net, {}).update(vips)
            if self._index.revision == revision:
                return
        self._index.rebuild(view)
        self._changes = None

    def _program(self, view: NodeView, task_id: str, netns: str,
                 changes: Changes | None) -> bool:
        task = view["tasks"].get(task_id)
        networks = frozenset(task["addrs"]) if task else frozenset()
        marks = render_marks(view, task_id)
        table = self._tasks.get(task_id)
        fresh = table is None
        if table is None:
            table = self._tasks[task_id] = TaskTable(Nft(netns), networks)
        if fresh or changes is None or table.networks != networks:
            # Compare in full: a new namespace, a rebuilt index, or the task's networks moved.
            wanted = self._index.table(set(networks))
            updates = {vip: wanted.get(vip) for vip in table.vips.keys() | wanted.keys()
                       if table.vips.get(vip) != wanted.get(vip)}
        else:
            updates = {vip: backends for net in networks
                       for vip, backends in changes.get(net, {}).items()
                       if table.vips.get(vip) != backends}
        if not updates and marks == table.marks and not fresh:
            return False
        tx = Transaction()
        counts = add_pick_rules(tx, table.counts, {v: b for v, b in updates.items() if b})
        for vip, backends in sorted(updates.items()):
            change_vip(tx, vip, table.vips.get(vip), backends)
        change_marks(tx, table.marks, marks)
        try:
            table.nft.run((SKELETON if fresh else "") + tx.text())
        except Exception:
            # Start this namespace over on the next sync, from the skeleton.
            self._forget(task_id)
            raise
        table.nft.drop_cache()
        for vip, backends in updates.items():
            if backends is None:
                table.vips.pop(vip, None)
            else:
                table.vips[vip] = backends
        table.counts |= counts
        table.marks, table.networks = marks, networks
        log.debug("lb %s: %d VIPs changed, %d programmed", task_id[:12], len(updates),
                  len(table.vips))
        return True

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        table = self._tasks.pop(task_id, None)
        if table is not None:
            table.nft.close()

    def close(self) -> None:
        with self._lock:
            for task_id in list(self._tasks):
                self._forget(task_id)
