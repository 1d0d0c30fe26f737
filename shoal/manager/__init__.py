"""The manager: the store, the controllers that act on it, and the sessions with the agents.

Controllers never call each other: each reads the store and writes its own transactions. One
loop runs them in a fixed order (orchestrator, allocator, scheduler, and keys.py's rotator of
the encrypted overlays' preshared key) until a pass writes nothing, then the dispatcher pushes
the settled state to the agents once, so a burst of changes costs one view update per node.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shoal.manager.allocator import Allocator
from shoal.manager.audit import AuditLog
from shoal.manager.control import Control
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.keys import DEFAULT_INTERVAL, KeyRotator
from shoal.manager.orchestrator import Orchestrator
from shoal.manager.scheduler import Scheduler
from shoal.manager.security import ClusterSecurity
from shoal.model.objects import new_cluster
from shoal.store.base import BaseStore

log = logging.getLogger("shoal.manager")

# Pushes to the agents are at least this far apart: a burst of reports (30 tasks starting)
# then costs a handful of view updates, not one per report, at a few ms of added latency.
PUSH_MIN_INTERVAL = 0.01


class Manager:
    def __init__(self, store: BaseStore, advertise: str,
                 security: ClusterSecurity | None = None, audit: AuditLog | None = None,
                 key_rotation: float = DEFAULT_INTERVAL) -> None:
        self.store = store
        self.security = security  # the cluster CA; None only in tests of the controllers
        self.audit = audit
        if not store.list("cluster"):
            with store.tx() as tx:
                tx.create("cluster", new_cluster())
        self.allocator = Allocator(store._state)
        self.control = Control(store, self.allocator)
        self.control.ensure_ingress()
        self.orchestrator = Orchestrator(store, self._wake_at)
        self.scheduler = Scheduler(store)
        self.dispatcher = Dispatcher(store, advertise)
        self.dispatcher.wake = self.wake
        if security is not None:
            self.dispatcher.secured = True
            self.dispatcher.leader_id = security.credentials().identity.name
            security.on_revoke = self.dispatcher.drop
            security.on_role_change = self.dispatcher.ask_renew
            security.on_renew = self.dispatcher.renewed
            security.manager_status = self.dispatcher.manager_status
        self.keys = KeyRotator(store, key_rotation, self._wake_at)  # encrypted overlays' PSK
        self._watch = store.watch()
        self._wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def cluster(self) -> dict:
        return self.store.list("cluster")[0]

    def wake(self) -> None:
        self._wakeup.set()

    def _wake_at(self, when: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # settle() called outside the loop (unit tests): nothing to wake

        delay = max(0.0, when - time.monotonic())
        if self._timer is None or self._timer.when() > loop.time() + delay:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.wake()

    async def run(self) -> None:
        self.dispatcher.startup()
        last_push = 0.0
        while True:
            self.settle()
            wait = last_push + PUSH_MIN_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                self.settle()
            await self.dispatcher.push()
            last_push = time.monotonic()
            if self._watch.queue.empty():
                waiter = asyncio.ensure_future(self._watch.queue.get())
                woken = asyncio.ensure_future(self._wakeup.wait())
                done, pending = await asyncio.wait({waiter, woken},
                                                   return_when=asyncio.FIRST_COMPLETED)
                for fut in pending:
                    fut.cancel()
                if waiter in done:
                    self._watch.queue.put_nowait(waiter.result())
            self._wakeup.clear()

    def settle(self) -> None:
        """Run the controllers until the store stops changing."""
        for _ in range(100):
            events = self._watch.drain()
            self.allocator.observe(events)
            self.orchestrator.observe(events)
            before = self.store.revision
            try:
                self.orchestrator.tick()
                self.allocator.tick(self.store)
                self.scheduler.tick()
                self.keys.tick()
            except Exception:
                log.exception("controller pass failed; retrying on the next change")
                return
            if self.store.revision == before and self._watch.queue.empty():
                return
        log.warning("controllers did not settle after 100 passes")
