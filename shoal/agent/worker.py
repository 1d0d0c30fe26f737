"""The agent's reconcile loop: the NodeView's tasks in, processes and namespaces out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.agent import runtime
from shoal.agent.session import Session
from shoal.dataplane import Dataplane
from shoal.errors import ShoalError
from shoal.model import view as nv

log = logging.getLogger("shoal.agent")

STOP_GRACE = 10.0  # Docker's default stop grace period
NO_COMMAND = ("the service has no command: shoal runs a command from the node's own filesystem, "
              "not an image; give one after the image name")


@dataclass
class LocalTask:
    entry: nv.TaskEntry
    netns: str = ""
    process: runtime.TaskProcess | None = None
    state: str = "accepted"
    stopping: bool = False
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class Agent:
    def __init__(self, manager: str, hostname: str, addr: str, state_dir: str,
                 ns_prefix: str) -> None:
        self.hostname = hostname
        self.addr = addr
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ns_prefix = ns_prefix
        self.view: nv.NodeView | None = None
        self.tasks: dict[str, LocalTask] = {}
        self.reports: dict[str, dict[str, Any]] = {}  # latest per task, resent after reconnect
        self.dataplane: Dataplane | None = None
        self._changed = asyncio.Event()
        self.session = Session(manager, self)

    # --- identity ---

    @property
    def node_id(self) -> str:
        path = self.state_dir / "node_id"
        return path.read_text().strip() if path.exists() else ""

    def registered(self, node_id: str) -> None:
        (self.state_dir / "node_id").write_text(node_id + "\n")
        if self.dataplane is None:
            self.dataplane = Dataplane(node_id, self.addr, self.ns_prefix)
            # A restarted agent starts clean: what the manager still wants comes back from
            # the snapshot; nothing half-made by a previous run is trusted.
            self.dataplane.teardown()

    def register_message(self) -> dict[str, Any]:
        return {"type": "register", "node_id": self.node_id, "hostname": self.hostname,
                "addr": self.addr, "resources": {
                    "NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000,
                    "MemoryBytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}}

    # --- view updates from the session ---

    def set_view(self, view: nv.NodeView) -> None:
        self.view = view
        self._changed.set()

    def apply_delta(self, delta: dict[str, Any]) -> None:
        if self.view is not None:
            self.view = nv.apply_delta(self.view, delta)
            self._changed.set()

    # --- reports ---

    def report(self, task_id: str, state: str, message: str, **extra: Any) -> None:
        local = self.tasks.get(task_id)
        if local is not None:
            local.state = state
        msg = {"id": task_id, "state": state, "message": message, **extra}
        self.reports[task_id] = msg
        self.session.send_status([msg])

    # --- requests from the manager ---

    def answer(self, body: dict[str, Any]) -> Any:
        if body.get("op") == "logs":
            out = {}
            for task_id in body.get("tasks", []):
                path = self.log_path(task_id)
                stamp = ""
                with contextlib.suppress(FileNotFoundError):
                    stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ")
                out[task_id] = [[stamp, "stdout", line]
                                for line in runtime.read_log(path, body.get("tail"))]
            return out
        return {"error": f"unknown request {body.get('op')!r}"}

    def log_path(self, task_id: str) -> Path:
        return self.state_dir / "logs" / f"{task_id}.log"

    # --- the loop ---

    async def run(self) -> None:
        session = asyncio.create_task(self.session.run())
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                try:
                    await self.reconcile()
                except ShoalError as exc:
                    log.error("reconcile failed: %s; retrying", exc)
                    await asyncio.sleep(0.5)
                    self._changed.set()
        finally:
            session.cancel()
            await self.shutdown()

    async def reconcile(self) -> None:
        view, dp = self.view, self.dataplane
        if view is None or dp is None:
            return
        wanted = view["tasks"]
        # 1. Stop what is no longer wanted, and forget what left the view.
        for task_id, local in list(self.tasks.items()):
            entry = wanted.get(task_id)
            if entry is None or entry["desired_state"] != "running":
                if not local.stopping:
                    local.stopping = True
                    asyncio.create_task(self._stop(local, forget=entry is None))
                elif entry is None and local.process is None:
                    self._forget(task_id)
        # 2. The overlay networks this node's tasks are on, and their peers.
        await asyncio.to_thread(dp.sync, view)
        # 3. Start what is new.
        for task_id, entry in wanted.items():
            if entry["desired_state"] == "running" and task_id not in self.tasks:
                local = self.tasks[task_id] = LocalTask(entry)
                await self._start(local, view)

    async def _start(self, local: LocalTask, view: nv.NodeView) -> None:
        entry = local.entry
        assert self.dataplane is not None
        self.report(entry["id"], "preparing", "preparing")
        try:
            local.netns = await asyncio.to_thread(self.dataplane.attach, entry, view)
        except ShoalError as exc:
            self.report(entry["id"], "rejected", "network attach failed", err=str(exc))
            return
        if not entry["command"]:
            self.report(entry["id"], "failed", "no command", err=NO_COMMAND, exit_code=127,
                        netns=local.netns)
            return
        self.report(entry["id"], "starting", "starting", netns=local.netns)
        env = {"HOSTNAME": entry["name"], "SHOAL_TASK_ID": entry["id"],
               "SHOAL_TASK_NAME": entry["name"], "SHOAL_SERVICE_NAME": entry["service_name"]}
        env.update(v.split("=", 1) for v in entry["env"] if "=" in v)  # type: ignore[misc]
        try:
            local.process = await runtime.start(entry["id"], local.netns, entry["command"], env,
                                                entry["dir"], self.log_path(entry["id"]))
        except ShoalError as exc:
            self.report(entry["id"], "failed", "start failed", err=str(exc), netns=local.netns)
            return
        self.report(entry["id"], "running", "started", pid=local.process.pid, netns=local.netns)
        local.waiter = asyncio.create_task(self._wait(local))

    async def _wait(self, local: LocalTask) -> None:
        assert local.process is not None
        started = time.monotonic()
        code = runtime.exit_code(await local.process.proc.wait())
        if local.stopping:
            return  # _stop reports
        ran = time.monotonic() - started
        log.info("task %s exited with %d after %.1fs", local.entry["name"], code, ran)
        if code == 0:
            self.report(local.entry["id"], "complete", "finished", exit_code=0, netns=local.netns)
        else:
            self.report(local.entry["id"], "failed", "task: non-zero exit", exit_code=code,
                        err=f"task: non-zero exit ({code})", netns=local.netns)

    async def _stop(self, local: LocalTask, forget: bool) -> None:
        task_id = local.entry["id"]
        try:
            if local.process is not None:
                code = await runtime.stop(local.process, STOP_GRACE)
                if local.state not in ("complete", "failed"):
                    self.report(task_id, "shutdown", "shutdown", exit_code=code,
                                netns=local.netns)
            elif local.state not in ("complete", "failed", "rejected"):
                self.report(task_id, "shutdown", "shutdown", netns=local.netns)
            if self.dataplane is not None:
                await asyncio.to_thread(self.dataplane.detach, task_id)
        except ShoalError as exc:
            log.error("stopping task %s: %s", task_id, exc)
        finally:
            local.process = None
        view = self.view
        if forget or view is None or task_id not in view["tasks"]:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        self.reports.pop(task_id, None)

    async def shutdown(self) -> None:
        """Stop every task and remove everything this agent made (lab down, SIGTERM)."""
        stops = [runtime.stop(t.process, 2.0) for t in self.tasks.values() if t.process]
        for t in self.tasks.values():
            t.stopping = True
        await asyncio.gather(*stops, return_exceptions=True)
        if self.dataplane is not None:
            self.dataplane.teardown()
            self.dataplane.close()
