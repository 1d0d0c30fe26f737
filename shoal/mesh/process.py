"""The agent's side of the mesh: start `python -m shoal.mesh`, give it routes, restart it.

    mesh = MeshProcess(MeshOptions(http="0.0.0.0:80", https="0.0.0.0:443"))
    await mesh.start()                          # returns once it listens
    await mesh.set_routes({"http": {"app.example.org": ["10.255.0.5:80"]},
                           "https": {"secure.example.org": ["10.255.0.5:443"]}})
    await mesh.stop()

`set_routes` takes the whole table each time (routes.routes_from_services builds it from
service labels) and returns once the process applies it; a bad table raises InvalidRoutes
before anything is sent. If the process dies it is started again, with a short backoff, and
given the last table. It reads its commands from a pipe only this object holds, so it ends
when the agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.childproc import Channel
from shoal.mesh.daemon import config_argv, parse_listen
from shoal.mesh.errors import MeshError
from shoal.mesh.routes import Addr, parse_routes
from shoal.mesh.server import MeshConfig

log = logging.getLogger("shoal.agent.mesh")

RESTART_MIN, RESTART_MAX = 0.1, 5.0
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0

RoutesDoc = Mapping[str, Mapping[str, Sequence[str]]]


@dataclass(frozen=True)
class MeshOptions:
    http: str = "0.0.0.0:80"  # 'none' to disable
    https: str = "0.0.0.0:443"
    workers: int = 1
    config: MeshConfig = field(default_factory=MeshConfig)
    netns: str | None = None  # run in this named namespace (nsenter --net=/run/netns/NAME)
    debug: bool = False

    def argv(self, python: str) -> list[str]:
        prefix = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []
        return [*prefix, python, "-m", "shoal.mesh", "--http", self.http, "--https",
                self.https, "--workers", str(self.workers), *config_argv(self.config),
                *(["--debug"] if self.debug else [])]


class MeshProcess:
    def __init__(self, options: MeshOptions | None = None, python: str = sys.executable) -> None:
        self.options = options or MeshOptions()
        parse_listen(self.options.http)  # argparse errors now rather than in the child
        parse_listen(self.options.https)
        self.python = python
        self.channel = Channel(MeshError, "the mesh")
        self.routes: dict[str, Any] = {"http": {}, "https": {}}
        self.http_address: Addr | None = None
        self.https_address: Addr | None = None
        self.restarts = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._failed: BaseException | None = None
        self._first_exit = asyncio.Event()  # it ended before it ever listened: a bad option
        self._ever_ready = False
        self._stopping = False

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.channel.proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = 30.0) -> None:
        """Start it (and keep it running); returns once it listens."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise())
        waiter = asyncio.create_task(self._ready.wait())
        failed = asyncio.create_task(self._first_exit.wait())
        done, _ = await asyncio.wait([waiter, failed], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if waiter not in done:
            waiter.cancel()
            await self.stop()
            raise MeshError(f"the mesh did not start: {self._failed or 'timeout'} "
                            "(its log is on the agent's stderr)")

    async def set_routes(self, routes: RoutesDoc, timeout: float = CALL_TIMEOUT) -> None:
        """Replace the whole table: {"http": {host: ["ip:port", ...]}, "https": {...}}."""
        parse_routes(routes)  # InvalidRoutes here, with nothing sent
        self.routes = {"http": dict(routes.get("http") or {}),
                       "https": dict(routes.get("https") or {})}
        if not self._ready.is_set():
            return  # (re)starting: the supervisor sends the latest table first
        await self.channel.call({"op": "routes", **self.routes}, timeout)

    async def stop(self) -> int | None:
        """End the process (stdin EOF, then SIGKILL after STOP_TIMEOUT); its exit code."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self.proc
        if proc is None:
            return None
        await self.channel.end(STOP_TIMEOUT)
        self.channel.fail_pending("the mesh stopped")
        return proc.returncode

    async def __aenter__(self) -> MeshProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _supervise(self) -> None:
        delay = RESTART_MIN
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Started from the agent's main thread: PR_SET_PDEATHSIG in the child is tied to
            # the thread that forked it.
            try:
                proc = self.channel.proc = await asyncio.create_subprocess_exec(
                    *self.options.argv(self.python), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, limit=1 << 20)
            except OSError as exc:
                self._failed = exc
                log.error("cannot start the mesh: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RESTART_MAX, delay * 2)
                continue
            started = loop.time()
            reader = asyncio.create_task(self._read(proc))
            code = await proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # stdout ends with the process; keep its last answers
            self._ready.clear()
            self.channel.fail_pending(f"the mesh exited ({code})")
            if self._stopping:
                return
            self._failed = MeshError(f"the mesh exited with {code}")
            if not self._ever_ready:
                self._first_exit.set()
                return  # never listened: restarting would fail the same way
            if loop.time() - started > 10:
                delay = RESTART_MIN
            self.restarts += 1
            log.error("mesh exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                self.http_address = parse_listen(msg["http"]) if msg.get("http") else None
                self.https_address = parse_listen(msg["https"]) if msg.get("https") else None
                # The table before anyone else writes: a restarted mesh routes at once.
                self.channel.write({"op": "routes", "seq": 0, **self.routes})
                self._ever_ready = True
                self._ready.set()
                continue
            if not self.channel.answer(msg) and msg.get("ok") is False:
                log.error("mesh refused routes: %s", msg.get("error"))
