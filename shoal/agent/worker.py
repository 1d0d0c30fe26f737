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

from shoal.agent import health, runtime
from shoal.agent.session import Session
from shoal.dataplane import Dataplane
from shoal.dataplane.firewall import Firewall
from shoal.dataplane.ingress import Ingress
from shoal.dataplane.lb import LoadBalancer
from shoal.dataplane.names import WIREGUARD_PORT
from shoal.dataplane.wireguard import WireGuard
from shoal.dns import resolvconf
from shoal.dns.process import DnsOptions, Resolver, ResolverError
from shoal.errors import ShoalError
from shoal.mesh import MeshError, MeshOptions, MeshProcess, ServiceRoutes, routes_from_services
from shoal.model import view as nv

log = logging.getLogger("shoal.agent")

DRAIN_DELAY = 1.0  # seconds a stopping task keeps serving after it left every load balancer
RESYNC_EVERY = 30.0  # seconds between full re-reads of the kernel, to repair drift
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
    health: asyncio.Task[None] | None = field(default=None, repr=False)


class Agent:
    def __init__(self, manager: str, hostname: str, addr: str, state_dir: str,
                 ns_prefix: str, dns: DnsOptions | None = None,
                 mesh_ports: tuple[int, int] = (80, 443), wireguard_go: str = "wireguard-go",
                 wireguard_port: int = WIREGUARD_PORT) -> None:
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
        self.session = Session(manager, self, self.state_dir / "tls")
        # The node's DNS server for its tasks, a child process fed every view change (shoal.dns).
        self.resolver = Resolver(dns)
        self.lb = LoadBalancer()  # VIPs, inside each task's namespace
        self.ingress = Ingress()  # published ports, in the node's namespace
        # What may enter the node and its tasks, and task egress (dataplane/firewall.py).
        self.firewall = Firewall(addr, manager, tuple(mesh_ports))
        self.drain_delay = DRAIN_DELAY
        # Encrypted overlays: the node's wireguard-go, its key and peers (dataplane/wireguard.py).
        self.wireguard = WireGuard(self.state_dir, wireguard_port, wireguard_go)
        self.wireguard.on_change = self._encryption_changed
        self._wg_generation = 0  # the WireGuard interface the VXLAN devices were made over
        self._force_next = False  # the next reconcile re-reads the kernel (see _encryption_changed)
        self._peers: object = None  # the peers the tasks' reply routes were made for
        # The HTTP routing mesh on this node's own address (shoal.mesh); port 0 turns it off.
        http, https = mesh_ports
        self.mesh = MeshProcess(MeshOptions(
            http=f"{addr}:{http}" if http else "none", https=f"{addr}:{https}" if https
            else "none")) if http or https else None
        self._mesh_routes: object = None

    # --- identity ---

    @property
    def node_id(self) -> str:
        return self.session.node_id  # the CN of the node's certificate

    def registered(self, node_id: str) -> None:
        if self.dataplane is None:
            self.dataplane = Dataplane(node_id, self.addr, self.ns_prefix)
            # A restarted agent starts clean: what the manager still wants comes back from
            # the snapshot; nothing half-made by a previous run is trusted.
            self.dataplane.teardown()
            resolvconf.remove_stale(self.ns_prefix)

    def register_message(self) -> dict[str, Any]:
        return {"type": "register", "hostname": self.hostname,
                "addr": self.addr, "encryption": self.wireguard.report(), "resources": {
                    "NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000,
                    "MemoryBytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}}

    def _encryption_changed(self) -> None:
        """wireguard-go died or came back: tell the manager (its scheduler places encrypted
        networks' tasks by it) and reprogram."""
        self.session.send_encryption(self.wireguard.report())
        self._force_next = True  # a new interface: everything over it is checked again
        self._changed.set()

    # --- view updates from the session ---

    def set_view(self, view: nv.NodeView) -> None:
        self.view = view
        self.resolver.set_view(nv.without_keys(view))  # the PSK stays in the agent
        self.lb.reset()
        self._changed.set()

    def apply_delta(self, delta: dict[str, Any]) -> None:
        if self.view is not None:
            self.view = nv.apply_delta(self.view, delta)
            # At once, not at the next reconcile: names follow the view, not the task starts.
            self.resolver.apply_delta({k: v for k, v in delta.items() if k != "keys"},
                                      nv.without_keys(self.view))
            # The load balancer renders only what a delta touched (dataplane/lb_index.py).
            self.lb.observe(delta)
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
            offsets = body.get("offsets") or {}
            for task_id in body.get("tasks", []):
                path = self.log_path(task_id)
                stamp = ""
                with contextlib.suppress(FileNotFoundError):
                    stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ")
                lines, offset = runtime.read_log(path, body.get("tail"),
                                                 int(offsets.get(task_id, 0)))
                out[task_id] = {"lines": [[stamp, "stdout", line] for line in lines],
                                "offset": offset}
            return out
        if body.get("op") == "encryption":
            return self.wireguard.status(self.view, self.node_id, str(body.get("network")))
        return {"error": f"unknown request {body.get('op')!r}"}

    def log_path(self, task_id: str) -> Path:
        return self.state_dir / "logs" / f"{task_id}.log"

    # --- the loop ---

    async def run(self) -> None:
        # Before the session: the register message says whether this node can encrypt.
        await self.wireguard.start()
        await self.resolver.start()
        if self.mesh is not None:
            try:
                await self.mesh.start()
            except MeshError as exc:
                # Tasks, names and VIPs do not depend on it: run on without the mesh.
                log.error("the HTTP routing mesh cannot start: %s; running without it", exc)
                await self.mesh.stop()
                self.mesh = None
        session = asyncio.create_task(self.session.run())
        try:
            while True:
                try:
                    await asyncio.wait_for(self._changed.wait(), RESYNC_EVERY)
                    force = self._force_next
                except TimeoutError:
                    force = True
                self._changed.clear()
                self._force_next = False
                try:
                    await self.reconcile(force)
                except ShoalError as exc:
                    log.error("reconcile failed: %s; retrying", exc)
                    await asyncio.sleep(0.5)
                    self._changed.set()
        finally:
            session.cancel()
            await self.shutdown()

    async def reconcile(self, force: bool = False) -> None:
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
        # Told to stop a task this agent does not run (it restarted since): it is not running.
        for task_id, entry in wanted.items():
            if entry["desired_state"] != "running" and task_id not in self.tasks \
                    and self.reports.get(task_id, {}).get("state") != "shutdown":
                self.report(task_id, "shutdown", "not running on this node")
        for task_id in [t for t in self.reports if t not in wanted and t not in self.tasks]:
            del self.reports[task_id]
        # 2. The overlay networks this node's tasks are on, and their peers. WireGuard first:
        # an encrypted network's VXLAN device sends from the tunnel address it puts in place.
        wg = self.wireguard
        await asyncio.to_thread(wg.sync, view, self.node_id, force)
        if wg.generation != self._wg_generation:
            # wireguard-go came back as a new interface: its VXLAN devices are remade.
            log.info("WireGuard interface %s is new: remaking encrypted VXLAN devices",
                     wg.ifname)
            await asyncio.to_thread(dp.drop_encrypted)
            self._wg_generation = wg.generation
        dp.tunnel_addr = view["node"].get("tunnel_addr") or None if wg.ready else None
        self.firewall.wireguard = (wg.ifname, wg.port) if wg.ready else None
        await asyncio.to_thread(dp.sync, view, force)
        # The node's filter, before any task starts behind it.
        await asyncio.to_thread(self.firewall.sync, view, force)
        # 3. Start what is new.
        for task_id, entry in wanted.items():
            if entry["desired_state"] == "running" and task_id not in self.tasks:
                local = self.tasks[task_id] = LocalTask(entry)
                await self._start(local, view)
        # 4. Reply routes back to every node that may forward to a task (see plan.py).
        peers = {k: (p["addr"], p.get("ingress_addr")) for k, p in view["peers"].items()}
        if peers != self._peers or force:
            for local in list(self.tasks.values()):
                if local.netns and not local.stopping and local.entry["id"] in wanted:
                    await asyncio.to_thread(dp.attach, wanted[local.entry["id"]], view)
            self._peers = peers
        # 5. VIPs in every local task's namespace, and the node's published ports.
        netns_of = {task_id: t.netns for task_id, t in self.tasks.items()
                    if t.netns and not t.stopping}
        await asyncio.to_thread(self.lb.sync, view, netns_of)
        await asyncio.to_thread(self.ingress.sync, view)
        await self._sync_mesh(view)

    async def _sync_mesh(self, view: nv.NodeView) -> None:
        """Host names to the healthy tasks' ingress addresses, from the services' labels."""
        if self.mesh is None:
            return
        ingress = next((i for i, n in view["networks"].items() if n["ingress"]), None)
        services = []
        for svc in sorted(view["services"].values(), key=lambda s: s["name"]):
            addrs = tuple(sorted(ep["addrs"][ingress]["ip"] for ep in view["endpoints"].values()
                                 if ep["service_id"] == svc["id"] and ep["healthy"]
                                 and ingress in ep["addrs"]))
            services.append(ServiceRoutes(svc["name"], svc.get("labels", {}), addrs))
        table, problems = routes_from_services(services)
        if table == self._mesh_routes:
            return
        for problem in problems:
            log.warning("routing mesh: %s", problem)
        try:
            await self.mesh.set_routes(table)
            self._mesh_routes = table
        except MeshError as exc:
            log.error("routing mesh: %s", exc)

    async def _start(self, local: LocalTask, view: nv.NodeView) -> None:
        entry = local.entry
        assert self.dataplane is not None
        self.report(entry["id"], "preparing", "preparing")
        encrypted = sorted(view["networks"][n]["name"] for n in entry["addrs"]
                           if view["networks"].get(n, {}).get("encrypted"))
        if encrypted and not self.dataplane.tunnel_addr:
            # Fail closed (CVE-2023-28840): never carry an encrypted network in cleartext.
            self.report(entry["id"], "rejected", "encryption is not up", err=(
                f"network {', '.join(encrypted)} is encrypted and this node cannot encrypt "
                f"({self.wireguard.error or 'no tunnel address yet'}): refusing to carry it "
                "in cleartext"))
            return
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
        try:
            await asyncio.to_thread(self.lb.program, view, entry["id"], local.netns)
        except ShoalError as exc:
            self.report(entry["id"], "failed", "load balancer setup failed", err=str(exc),
                        netns=local.netns)
            return
        await self._dns_attach(entry, local.netns)
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
        if entry.get("healthcheck"):
            local.health = asyncio.create_task(self._watch_health(local, env))

    async def _watch_health(self, local: LocalTask, env: dict[str, str]) -> None:
        entry = local.entry
        check = entry["healthcheck"]
        assert check is not None and local.process is not None
        pid = local.process.pid

        def report(status: str) -> None:
            if not local.stopping:
                self.report(entry["id"], "running", f"health: {status}", health=status, pid=pid,
                            netns=local.netns)

        await health.monitor(local.netns, check, env, report)
        if local.stopping or local.process is None:
            return
        # Unhealthy: it already left the load balancers with that report; stop it and let
        # the orchestrator replace it, as Docker swarm does.
        local.stopping = True
        code = await runtime.stop(local.process, entry["stop_grace"])
        self.report(entry["id"], "failed", "unhealthy", err="task: unhealthy container",
                    exit_code=code, netns=local.netns)

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
        if local.health is not None:
            local.health.cancel()
        try:
            if local.process is not None:
                if local.process.proc.returncode is None and self.drain_delay > 0:
                    # The manager took it out of every view when it was told to stop; let
                    # the load balancers follow and requests in flight finish first.
                    await asyncio.sleep(self.drain_delay)
                code = await runtime.stop(local.process, local.entry["stop_grace"])
                if local.state not in ("complete", "failed"):
                    self.report(task_id, "shutdown", "shutdown", exit_code=code,
                                netns=local.netns)
            elif local.state not in ("complete", "failed", "rejected"):
                self.report(task_id, "shutdown", "shutdown", netns=local.netns)
            await self.resolver.detach(task_id)
            if local.netns:
                resolvconf.remove(local.netns)
            if self.dataplane is not None:
                await asyncio.to_thread(self.dataplane.detach, task_id)
        except ShoalError as exc:
            log.error("stopping task %s: %s", task_id, exc)
        finally:
            local.process = None
        view = self.view
        if forget or view is None or task_id not in view["tasks"]:
            self._forget(task_id)

    async def _dns_attach(self, entry: nv.TaskEntry, netns: str) -> None:
        """Before the task's first process: its resolv.conf (bound over /etc/resolv.conf by
        `ip netns exec`) and the resolver's sockets on 127.0.0.11:53 in its namespace."""
        dns = entry.get("dns") or {}
        try:
            await asyncio.to_thread(resolvconf.write, netns, dns.get("search"),
                                    dns.get("options"))
        except OSError as exc:
            log.error("task %s: cannot write its resolv.conf: %s", entry["name"], exc)
        try:
            await self.resolver.attach(entry["id"], netns)
        except ResolverError as exc:
            # The task runs anyway; a restarted resolver attaches it again.
            log.error("task %s: the resolver did not attach: %s", entry["name"], exc)

    def _forget(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        self.reports.pop(task_id, None)

    async def shutdown(self) -> None:
        """Stop every task and remove everything this agent made (lab down, SIGTERM)."""
        stops = [runtime.stop(t.process, 2.0) for t in self.tasks.values() if t.process]
        for t in self.tasks.values():
            t.stopping = True
            if t.health is not None:
                t.health.cancel()
        await asyncio.gather(*stops, return_exceptions=True)
        await self.resolver.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        for t in self.tasks.values():
            if t.netns:
                resolvconf.remove(t.netns)
        self.lb.close()
        try:
            self.ingress.close()
        except ShoalError as exc:
            log.error("removing the published ports: %s", exc)
        try:
            self.firewall.close()
        except ShoalError as exc:
            log.error("removing the node filter: %s", exc)
        if self.dataplane is not None:
            self.dataplane.teardown()
            self.dataplane.close()
        await self.wireguard.stop()
