"""A JSON-lines driver for one Dataplane, for tests and debugging:

    nsenter --net=/run/netns/<node> python -m shoal.dataplane --node-id n1 \\
        --underlay 198.18.0.11 --ns-prefix shoal-lab1-

Each input line is {"op": "sync", "view": {...}}, {"op": "attach", "task": {...}, "view": ...},
{"op": "detach", "task_id": ...}, {"op": "task_namespaces"} or {"op": "teardown"}; each output
line is {"ok": true, "result": ..., "changes": n, "seconds": t} or {"ok": false, "error": msg}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from shoal.dataplane.overlay import Dataplane
from shoal.errors import ShoalError


def handle(dp: Dataplane, req: dict[str, Any]) -> Any:
    op = req["op"]
    if op == "sync":
        return dp.sync(req["view"], force=bool(req.get("force")))
    if op == "attach":
        return dp.attach(req["task"], req["view"])
    if op == "detach":
        return dp.detach(req["task_id"])
    if op == "task_namespaces":
        return dp.task_namespaces()
    if op == "teardown":
        return dp.teardown()
    raise ValueError(f"unknown op {op!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.dataplane")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--underlay", required=True)
    parser.add_argument("--ns-prefix", required=True)
    parser.add_argument("--mtu", type=int, default=1450)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.debug:  # what shoal programs, not pyroute2's message dumps
        logging.getLogger("shoal").setLevel(logging.DEBUG)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        dp = Dataplane(args.node_id, args.underlay, args.ns_prefix, args.mtu)
    except ShoalError as exc:
        reply({"ok": False, "error": str(exc), "kind": type(exc).__name__})
        return 1
    reply({"ok": True, "result": "ready"})
    with dp:
        for line in sys.stdin:
            if not line.strip():
                continue
            start = time.perf_counter()
            try:
                result = handle(dp, json.loads(line))
            except (ShoalError, ValueError, KeyError) as exc:
                reply({"ok": False, "error": str(exc), "kind": type(exc).__name__})
                continue
            reply({"ok": True, "result": result, "changes": dp.last_changes,
                   "seconds": time.perf_counter() - start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
