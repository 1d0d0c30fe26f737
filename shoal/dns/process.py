"""The agent's side of its resolver: start `python -m shoal.dns`, feed it, restart it if it dies.

The agent hands over every view change as it gets it (the snapshot, then the manager's deltas
unchanged), and asks it to attach a task's namespace before the task starts and to detach it
before the namespace goes. The child reads from a pipe whose other end only the agent holds, so
it ends with the agent; if it ends on its own, it is started again (with a short backoff) and
given the whole view and every attached namespace again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from shoal.childproc import Channel
from shoal.errors import ShoalError
from shoal.model import view as nv

log = logging.getLogger("shoal.agent.dns")

RESTART_MIN, RESTART_MAX = 0.1, 5.0
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0
START_WAIT = 10.0


@dataclass(frozen=True)
class DnsOptions:
    upstreams: tuple[str, ...] = ()  # empty: the node's /etc/resolv.conf
    vip_ttl: int = 600
    task_ttl: int = 0
    forward_timeout: float = 2.0
    max_forwards: int = 256
    loop: str = "uvloop"
    debug: bool = False

    def argv(self) -> list[str]:
        out = [f"--upstream={u}" for u in self.upstreams]
        out += ["--vip-ttl", str(self.vip_ttl), "--task-ttl", str(self.task_ttl),
                "--forward-timeout", str(self.forward_timeout),
                "--max-forwards", str(self.max_forwards), "--loop", self.loop]
        return out + (["--debug"] if self.debug else [])


class ResolverError(ShoalError):
    pass


class Resolver:
    def __init__(self, options: DnsOptions | None = None, python: str = sys.executable) -> None:
        self.options = options or DnsOptions()
        self.python = python
        self.channel = Channel(ResolverError, "the resolver")
        self.view: nv.NodeView | None = None
        self.attached: dict[str, str] = {}  # task id -> namespace
        self.restarts = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.channel.proc

    # --- lifecycle ---

    async def start(self, wait: float = START_WAIT) -> None:
        """Start the resolver (and keep it running); wait until it takes commands, or give up
        waiting after `wait` seconds (the agent runs its tasks either way)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise())
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except TimeoutError:
            log.error("the resolver is not up after %gs; tasks start without it for now", wait)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.channel.end(STOP_TIMEOUT)  # end of input: it closes its sockets and exits
        self.channel.fail_pending("the resolver stopped")

    async def _spawn(self) -> asyncio.subprocess.Process:
        # Started from the agent's main thread: PR_SET_PDEATHSIG in the child is tied to the
        # thread that forked it.
        return await asyncio.create_subprocess_exec(
            self.python, "-m", "shoal.dns", *self.options.argv(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20)

    async def _supervise(self) -> None:
        delay = RESTART_MIN
        while not self._stopping:
            try:
                proc = self.channel.proc = await self._spawn()
            except OSError as exc:
                log.error("cannot start the resolver: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RESTART_MAX, delay * 2)
                continue
            reader = asyncio.create_task(self._read(proc))
            # Everything it must know, in order, before anyone else writes to it.
            if self.view is not None:
                self.channel.write({"op": "view", "view": self.view})
            replays = [self.call({"op": "attach", "task_id": t, "netns": ns})
                       for t, ns in self.attached.items()]
            self._ready.set()
            for result in await asyncio.gather(*replays, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.warning("resolver: re-attach failed: %s", result)
            started = asyncio.get_running_loop().time()
            code = await proc.wait()
            reader.cancel()
            self._ready.clear()
            self.channel.fail_pending(f"the resolver exited ({code})")
            if self._stopping:
                return
            if asyncio.get_running_loop().time() - started > 10:
                delay = RESTART_MIN
            self.restarts += 1
            log.error("resolver exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self.channel.answer(msg)

    async def call(self, msg: dict[str, Any], timeout: float = CALL_TIMEOUT) -> Any:
        return await self.channel.call(msg, timeout)

    # --- what the agent tells it ---

    def set_view(self, view: nv.NodeView) -> None:
        self.view = view
        self.channel.write({"op": "view", "view": view})

    def apply_delta(self, delta: dict[str, Any], view: nv.NodeView) -> None:
        self.view = view
        self.channel.write({"op": "delta", "delta": delta})

    async def attach(self, task_id: str, netns: str) -> None:
        """Listen on 127.0.0.11:53 in the task's namespace; returns once it does."""
        self.attached[task_id] = netns
        if not self._ready.is_set():
            return  # (re)starting: the supervisor attaches it with the others
        await self.call({"op": "attach", "task_id": task_id, "netns": netns})

    async def detach(self, task_id: str) -> None:
        """Close its sockets there (they would keep the namespace alive)."""
        if self.attached.pop(task_id, None) is None:
            return
        with contextlib.suppress(ResolverError):
            await self.call({"op": "detach", "task_id": task_id})

    async def stats(self) -> dict[str, Any]:
        return await self.call({"op": "stats"})  # type: ignore[no-any-return]
