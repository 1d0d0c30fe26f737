"""Task processes: a command run inside the task's network namespace, its output kept as its log.

`ip netns exec` is the launcher because it also binds /etc/netns/<ns>/ files (resolv.conf) over
/etc, which is how a task will find its DNS server. Each task leads its own session so a stop
reaches the whole process group, and any process still left in the namespace is killed before
the namespace goes (a live process would keep the namespace alive after its name is removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import KernelError

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}


@dataclass
class TaskProcess:
    task_id: str
    netns: str
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


async def start(task_id: str, netns: str, argv: list[str], env: dict[str, str], cwd: str,
                log_path: Path) -> TaskProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", netns, *argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env={**BASE_ENV, **env}, cwd=cwd or "/",
                start_new_session=True)
        except OSError as exc:
            raise KernelError(f"cannot start task {task_id}: {exc}") from exc
    return TaskProcess(task_id, netns, proc, log_path)


def exit_code(returncode: int) -> int:
    """As a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


async def stop(tp: TaskProcess, grace: float) -> int:
    """SIGTERM to the task's process group, SIGKILL after grace seconds; returns the exit code."""
    if tp.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tp.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(tp.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tp.pid, signal.SIGKILL)
            await tp.proc.wait()
    kill_netns_pids(tp.netns)
    return exit_code(tp.proc.returncode or 0)


def kill_netns_pids(netns: str) -> None:
    """Kill whatever still runs in the namespace (daemonised children, strays)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def read_log(path: Path, tail: int | None, offset: int = 0) -> tuple[list[str], int]:
    """Whole lines from byte offset on (the last `tail` of them), and the offset after them:
    a line still being written is left for the next read (`logs --follow`)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode(errors="replace").splitlines(keepends=True)
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return lines, offset + end
