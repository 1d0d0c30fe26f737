"""Health checks as Docker runs them: a command inside the task's namespace every interval.

The first probe runs one interval after the start. A probe that exits 0 within the timeout
passes; anything else fails. Failures inside the start period do not count, but a pass there
makes the task healthy at once. `retries` failures in a row make it unhealthy: the agent then
takes it out of every load balancer (through the manager's view) and stops it, and the
orchestrator replaces it, as Docker swarm does with an unhealthy container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable

from shoal.agent.runtime import BASE_ENV
from shoal.model.view import HealthCheck

log = logging.getLogger("shoal.agent.health")


def probe_argv(test: list[str]) -> list[str]:
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return list(test[1:])  # "CMD"


async def probe(netns: str, test: list[str], env: dict[str, str], timeout: float) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, *probe_argv(test), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**BASE_ENV, **env},
            start_new_session=True)
    except OSError as exc:
        log.info("health probe in %s cannot start: %s", netns, exc)
        return False
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False


async def monitor(netns: str, check: HealthCheck, env: dict[str, str],
                  report: Callable[[str], None]) -> None:
    """Run until cancelled; report("healthy" | "unhealthy" | "starting") on each change.
    Returns once the task is unhealthy."""
    started = time.monotonic()
    status = "starting"
    report(status)
    failures = 0
    while True:
        await asyncio.sleep(check["interval"])
        if await probe(netns, check["test"], env, check["timeout"]):
            failures = 0
            if status != "healthy":
                status = "healthy"
                report(status)
            continue
        if status != "healthy" and time.monotonic() - started < check["start_period"]:
            continue  # still starting up: failures do not count yet
        failures += 1
        if failures >= check["retries"]:
            report("unhealthy")
            return
