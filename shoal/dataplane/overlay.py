"""Dataplane: the one object the agent holds. It owns one netlink socket in the node namespace
and one worker thread that makes every kernel call, so pyroute2's per-thread event loop is made
once and never meets the agent's asyncio loop (call it directly or via asyncio.to_thread)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyroute2 import IPRoute

from shoal.dataplane import gateway, names, namespaces, networks, plan, tasks
from shoal.dataplane.links import Netlink
from shoal.errors import KernelError
from shoal.model.view import NodeView, TaskEntry

T = TypeVar("T")
log = logging.getLogger("shoal.dataplane")


class Dataplane:
    def __init__(self, node_id: str, underlay_addr: str, ns_prefix: str, mtu: int = 1450) -> None:
        namespaces.check_mount_namespace()
        self.node_id = node_id
        self.underlay_addr = underlay_addr
        self.ns_prefix = ns_prefix
        self.mtu = mtu
        self.last_changes = 0  # kernel writes made by the last call: 0 means it was a no-op
        # This node's WireGuard tunnel address while it can encrypt (set by the agent); None:
        # encrypted networks are not built here (fail closed).
        self.tunnel_addr: str | None = None
        self._synced: object = None  # the plan last programmed by sync
        self._gateway_addrs = gateway.Addresses()  # task id -> its node-local egress address
        # The worker thread is started from this thread, so it is in the node namespace too.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-dataplane")
        self._nl: Netlink | None = None
        try:
            self._nl = self._run(self._open)
        except BaseException:
            self._worker.shutdown(wait=True)
            raise

    def _open(self) -> Netlink:
        try:
            return Netlink(IPRoute(), "node namespace")
        except OSError as exc:
            raise KernelError(f"open a netlink socket in the node namespace: {exc}") from exc

    def _run(self, fn: Callable[[], T]) -> T:
        return self._worker.submit(fn).result()

    def _node(self) -> Netlink:
        if self._nl is None:
            raise KernelError("the dataplane is closed")
        return self._nl

    def _counted(self, fn: Callable[[Netlink], T]) -> T:
        def call() -> T:
            nl = self._node()
            before = nl.changes
            try:
                return fn(nl)
            finally:
                self.last_changes = nl.changes - before
        return self._run(call)

    def sync(self, view: NodeView, force: bool = False) -> None:
        """Make bridges, VXLAN devices, FDB and neighbour entries match the view.

        Reading the kernel back costs about 20 ms with 10 tasks a node, so a view that renders
        to what was last programmed is skipped; `force` re-reads and repairs drift."""
        wanted = (plan.plan_vxlan(view, self.underlay_addr, self.tunnel_addr, self.mtu),
                  plan.plan_fdb(view, self.node_id), plan.plan_node_addrs(view),
                  gateway.needed(view))
        if not force and wanted == self._synced:
            self.last_changes = 0
            return
        self._synced = None

        def call(nl: Netlink) -> None:
            networks.sync_networks(nl, view, self.node_id, self.underlay_addr, self.mtu,
                                   self.tunnel_addr)
            networks.sync_gateway(nl, gateway.needed(view), self.mtu + gateway.VXLAN_OVERHEAD)
        self._counted(call)
        self._synced = wanted

    def drop_encrypted(self) -> None:
        """Delete the encrypted networks' VXLAN devices; the next sync makes them again.
        For after wireguard-go restarted: a VXLAN device whose local address went away with
        the old interface drops every packet it is given, even once the address is back
        (seen on kernel 6.18; a new device works at once)."""
        self._synced = None
        self._counted(lambda nl: networks.remove_vxlans(nl, names.ENCRYPTED_VXLAN_PORT))

    def netns_name(self, task_id: str) -> str:
        return names.netns_name(self.ns_prefix, task_id)

    def attach(self, task: TaskEntry, view: NodeView) -> str:
        """Create or repair the task's namespace and its veths; return the namespace name."""
        netns = self.netns_name(task["id"])

        def call(nl: Netlink) -> str:
            nl.changes += tasks.attach(nl, task, view, netns, self.node_id, self.mtu,
                                       self._gateway_addrs)
            return netns
        return self._counted(call)

    def detach(self, task_id: str) -> None:
        """Delete the task namespace and its veths. No error if already gone."""
        self._counted(lambda nl: tasks.detach(nl, task_id, self.netns_name(task_id)))
        self._gateway_addrs.release(task_id)

    def task_namespaces(self) -> list[str]:
        """Task ids (12-char prefixes) whose namespaces exist with this prefix and this node."""
        def call() -> list[str]:
            out = []
            for netns in namespaces.names(self.ns_prefix):
                task_id = names.task_id_of(self.ns_prefix, netns)
                if task_id is not None and tasks.owner(netns) == self.node_id:
                    out.append(task_id)
            return out
        return self._run(call)

    def teardown(self) -> None:
        """Remove this node's task namespaces and every shoal bridge and VXLAN device here."""
        self._synced = None
        self._gateway_addrs.clear()

        def call(nl: Netlink) -> None:
            for netns in namespaces.names(self.ns_prefix):
                task_id = names.task_id_of(self.ns_prefix, netns)
                if task_id is None:
                    continue
                fd = namespaces.open_fd(netns)
                if fd is None:  # a stale file: its namespace is gone, whoever made it
                    try:
                        namespaces.remove(netns)
                    except OSError as exc:
                        raise namespaces.kernel_error(f"remove {netns}", exc) from exc
                    continue
                os.close(fd)
                if tasks.owner(netns) == self.node_id:
                    tasks.detach(nl, task_id, netns)
            networks.remove_all(nl)
        self._counted(call)

    def close(self) -> None:
        if self._nl is not None:
            nl, self._nl = self._nl, None
            self._worker.submit(nl.close).result()
        self._worker.shutdown(wait=True)

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
