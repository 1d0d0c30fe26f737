"""The resolver process's control channel: JSON lines from its agent on stdin, replies on stdout.

    {"op": "view", "view": {...}}                        a full NodeView (after a (re)connect)
    {"op": "delta", "delta": {...}}                      a NodeView delta, as the manager sent it
    {"op": "attach", "task_id": "...", "netns": "..."}   listen on 127.0.0.11:53 in that namespace
    {"op": "detach", "task_id": "..."}                   stop listening there
    {"op": "stats"}                                      numbers for logs and benchmarks

A message with a "seq" gets {"seq": n, "ok": true, "result": ...} or {"seq": n, "ok": false,
"error": "..."}; one without is applied silently. Messages are handled in order, so an attach
sent after a view is answered from that view. End of input (the agent is gone) ends the process.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from typing import Any

from shoal.dns.server import Server
from shoal.errors import ShoalError

log = logging.getLogger("shoal.dns.control")


def rss_bytes() -> int:
    """Resident memory of this process now (VmRSS), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Control:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.last_change_seconds = 0.0  # time the last view or delta took to apply

    async def handle(self, msg: dict[str, Any]) -> Any:
        op = msg.get("op")
        tables = self.server.tables
        if op == "view":
            started = time.perf_counter()
            tables.set_view(msg["view"])
            self.last_change_seconds = time.perf_counter() - started
            return {"revision": msg["view"].get("revision")}
        if op == "delta":
            started = time.perf_counter()
            touched = tables.apply_delta(msg["delta"])
            self.last_change_seconds = time.perf_counter() - started
            return {"networks": sorted(touched)}
        if op == "attach":
            await self.server.attach(str(msg["task_id"]), str(msg["netns"]))
            return None
        if op == "detach":
            self.server.detach(str(msg["task_id"]))
            return None
        if op == "stats":
            return {"rss": rss_bytes(), "listeners": len(self.server.listeners),
                    "networks": len(tables.nets), "inflight": self.server.forwarder.inflight,
                    "refused": self.server.forwarder.refused,
                    "last_change_seconds": self.last_change_seconds}
        raise ValueError(f"unknown op {op!r}")

    async def handle_line(self, line: bytes) -> dict[str, Any] | None:
        """One input line -> the reply to write, if the message asked for one."""
        try:
            msg = json.loads(line)
        except ValueError:
            log.error("control: not JSON: %.80r", line)
            return None
        seq = msg.get("seq") if isinstance(msg, dict) else None
        try:
            result = await self.handle(msg)
        except (ShoalError, OSError, ValueError, KeyError, TypeError) as exc:
            log.error("control %s failed: %s", msg.get("op"), exc)
            return None if seq is None else {"seq": seq, "ok": False, "error": str(exc)}
        return None if seq is None else {"seq": seq, "ok": True, "result": result}
