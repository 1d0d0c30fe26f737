"""The long-running processes: `shoal manager` and `shoal agent`.

The manager serves the Docker API on a unix socket (for local clients: the docker CLI, the SDK,
shoal's own CLI) and on the cluster port over mutual TLS (agents, other managers, remote users
with certificates). The agent runs in the node's network namespace and
never imports manager code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import ssl

    from shoal.dns.process import DnsOptions
    from shoal.manager.security import ClusterSecurity

log = logging.getLogger("shoal")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_manager(state_dir: str, socket_path: str, listen: str,
                      key_rotation: float | None = None) -> None:
    from shoal import ca
    from shoal.api.app import make_app
    from shoal.manager import Manager
    from shoal.manager.audit import AuditLog
    from shoal.manager.security import ClusterSecurity
    from shoal.store import SQLiteStore

    store = SQLiteStore(Path(state_dir) / "store.db")
    security = ClusterSecurity.load(store, Path(state_dir), listen)
    audit = AuditLog(Path(state_dir) / "audit.log")
    manager = Manager(store, listen, security, audit) if key_rotation is None else Manager(
        store, listen, security, audit, key_rotation)
    app = make_app(manager)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a stale socket from a killed manager
    await web.UnixSite(runner, socket_path).start()
    os.chmod(socket_path, 0o660)
    host, _, port = listen.rpartition(":")
    ctx = security.server_context()
    # Mutual TLS 1.3 on the cluster port; TLSSite logs every refused handshake and why.
    await ca.TLSSite(runner, host, int(port), ssl_context=ctx, reuse_address=True).start()
    log.info("manager up: unix://%s and %s (mutual TLS)", socket_path, listen)
    loop_task = asyncio.create_task(manager.run())
    renewal = asyncio.create_task(_renew_own_certificate(security, ctx))
    pruning = asyncio.create_task(_prune_revocations(security))
    try:
        await _until_signalled()
    finally:
        loop_task.cancel()
        renewal.cancel()
        pruning.cancel()
        await runner.cleanup()
        audit.close()
        store.close()


async def _prune_revocations(security: ClusterSecurity) -> None:
    """Expired certificates need no revocation entry: drop them at start and once a day."""
    from shoal.manager.security import PRUNE_EVERY

    while True:
        security.prune()
        await asyncio.sleep(PRUNE_EVERY)


async def _renew_own_certificate(security: ClusterSecurity, ctx: ssl.SSLContext) -> None:
    """The manager's server certificate renews like any node's, in process: a new key and
    certificate go to <state>/tls and into the live context."""
    from shoal import ca

    while True:
        await asyncio.sleep(ca.renew_delay(security.credentials().cert))
        try:
            new = security.renew_own(ctx)
            log.info("manager certificate renewed, valid until %s",
                     new.identity.not_after.isoformat(timespec="seconds"))
        except ca.CAError as exc:
            log.error("manager certificate renewal failed: %s; retrying", exc)
            await asyncio.sleep(ca.retry_delay(security.credentials().cert, 1))


async def run_agent(manager: str, hostname: str, addr: str, state_dir: str,
                    ns_prefix: str, dns: DnsOptions | None = None,
                    mesh_ports: tuple[int, int] = (80, 443), drain_delay: float = 1.0,
                    control_from: tuple[str, ...] | None = None,
                    closed_node: bool = False, wireguard_go: str = "wireguard-go",
                    wireguard_port: int = 51820) -> None:
    from shoal.agent import Agent

    agent = Agent(manager, hostname, addr, state_dir, ns_prefix, dns, mesh_ports,
                  wireguard_go, wireguard_port)
    agent.drain_delay = drain_delay
    agent.firewall.control_from = control_from
    agent.firewall.closed = closed_node
    task = asyncio.create_task(agent.run())
    await _until_signalled()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
