"""The audit log: every change asked of the manager, who asked, when, and how it ended.

One JSON object a line in <state>/audit.log. Each entry is one write(2) on a file opened with
O_APPEND, so entries never interleave and one is on disk (in the page cache) before the
caller gets its answer: a manager that dies loses none it has answered. The store is not the
place: it is held in memory whole, and an audit trail only grows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.model.objects import now

MAX_READ = 10_000  # entries returned by one read, newest last


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(self, who: str, role: str, remote: str, method: str, path: str, status: int,
               message: str = "", target: str = "") -> dict[str, Any]:
        entry = {"Time": now(), "User": who, "Role": role, "Remote": remote,
                 "Action": f"{method} {path}", "Target": target, "Status": status,
                 "Outcome": "allowed" if status < 400 else
                            "denied" if status in (401, 403) else "failed",
                 "Message": message}
        os.write(self._fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        return entry

    def entries(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue  # a torn last line from a crash mid-write
        except FileNotFoundError:
            return

    def read(self, user: str | None = None, since: str | None = None,
             limit: int = MAX_READ) -> list[dict[str, Any]]:
        out = [e for e in self.entries()
               if (user is None or e.get("User") == user)
               and (since is None or e.get("Time", "") >= since)]
        return out[-limit:]

    def close(self) -> None:
        os.close(self._fd)
