"""The agent's helper processes (the DNS resolver, the HTTP mesh): what each does first (die
with the agent, lift its file limit), and the control pipe the agent drives it through."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import resource
import signal
import sys
from typing import Any

from shoal.errors import ShoalError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL from the kernel when the parent dies, even if the control pipe is shared."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        sys.exit(0)  # the parent died before prctl: nobody will ever drive this process


def raise_fd_limit() -> None:
    """Sockets per task and per connection: the default soft limit of 1024 is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Channel:
    """The agent's side of a helper's control pipe: JSON lines to its stdin, each answer on its
    stdout matched to the call that carries the same `seq`."""

    def __init__(self, error: type[ShoalError], name: str) -> None:
        self.error = error  # raised for the calls this channel cannot complete
        self.name = name  # "the resolver", "the mesh": for messages
        self.proc: asyncio.subprocess.Process | None = None
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}

    def write(self, msg: dict[str, Any]) -> bool:
        """Send without waiting; False when the process is not there to read it."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        try:
            proc.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            return False  # it died: its supervisor starts it again and replays
        return True

    async def call(self, msg: dict[str, Any], timeout: float) -> Any:
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        if not self.write({**msg, "seq": seq}):
            self._pending.pop(seq, None)
            raise self.error(f"{self.name} is not running")
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(seq, None)
            raise self.error(f"{self.name} did not answer {msg.get('op')} in "
                             f"{timeout:g}s") from None

    def answer(self, msg: dict[str, Any]) -> bool:
        """Complete the call msg answers; False if no call waits for it."""
        fut = self._pending.pop(msg.get("seq"), None)  # type: ignore[arg-type]
        if fut is None or fut.done():
            return False
        if msg.get("ok"):
            fut.set_result(msg.get("result"))
        else:
            fut.set_exception(self.error(str(msg.get("error"))))
        return True

    def fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self.error(why))

    async def end(self, timeout: float) -> None:
        """End of input, then SIGKILL if it has not exited after timeout seconds."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
