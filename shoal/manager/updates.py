"""A rolling update's pace and outcome, as Docker's UpdateConfig asks: Parallelism slots at a
time, Delay between batches, failures judged within Monitor and acted on by FailureAction
(pause, continue, rollback) once they pass MaxFailureRatio; the service's UpdateStatus says
where it stands ("updating", "paused", "completed", "rollback_started", ...), which is what
`docker service update` (without -d) watches.

Pure: given the service and its tasks grouped by slot, it answers; the orchestrator writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from shoal.model.objects import TERMINAL, Obj, now

DEFAULT_MONITOR_NS = 5_000_000_000  # Docker's
FAILED = ("failed", "rejected")


def seconds_since(stamp: str, wall: float) -> float:
    """Seconds from an object timestamp ("2026-11-25T22:05:24.054123Z") to `wall`."""
    try:
        t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return math.inf
    return wall - t.timestamp()


@dataclass
class Progress:
    budget: float  # how many more slots may start their update now
    wait: float  # seconds until a delayed batch may go (0: none waiting)
    status: Obj | None  # a new UpdateStatus to store, or None for no change
    roll_back: bool = False  # FailureAction rollback fired: go back to PreviousSpec


def config(svc: Obj) -> Obj:
    """The UpdateConfig in force: RollbackConfig while rolling back."""
    spec = svc["Spec"]
    if (svc.get("UpdateStatus") or {}).get("State") == "rollback_started":
        return spec.get("RollbackConfig") or spec.get("UpdateConfig") or {}
    return spec.get("UpdateConfig") or {}


def progress(svc: Obj, groups: dict[object, list[Obj]], keys: list[object],
             wall: float) -> Progress:
    template = svc["Spec"]["TaskTemplate"]
    update = config(svc)
    status = svc.get("UpdateStatus") or {}
    state = status.get("State", "")
    if state in ("paused", "rollback_paused"):
        return Progress(0, 0, None)
    monitor = update.get("Monitor", DEFAULT_MONITOR_NS) / 1e9
    delay = update.get("Delay", 0) / 1e9
    in_flight, wait, failures, done = 0, 0.0, [], True
    for key in keys:
        group = groups.get(key, [])
        old = [t for t in group if t["Spec"] != template]
        new = [t for t in group if t["Spec"] == template]
        live_new = [t for t in new if t["DesiredState"] == "running"
                    and t["Status"]["State"] not in TERMINAL]
        if any(t["DesiredState"] == "running" for t in old) or not live_new or any(
                t["Status"]["State"] != "running" for t in live_new):
            done = False
        elif state in ("updating", "rollback_started"):
            # Done only once every new task has run for Monitor: a failure within it counts.
            ran = min(seconds_since(t["Status"]["Timestamp"], wall) for t in live_new)
            if ran < monitor:
                done, wait = False, max(wait, monitor - ran)
        if state in ("updating", "rollback_started"):
            failures += [t for t in new if t["Status"]["State"] in FAILED
                         and t["CreatedAt"] >= status.get("StartedAt", "")]
        if not old:
            continue
        if any(t["Status"]["State"] != "running" for t in live_new):
            in_flight += 1  # its new task is still starting
        elif delay and live_new:
            ran = min(seconds_since(t["Status"]["Timestamp"], wall) for t in live_new)
            if ran < delay:
                in_flight += 1  # started; the batch after it waits out Delay
                wait = max(wait, delay - ran)
    parallelism = update.get("Parallelism", 1)
    budget = math.inf if not parallelism else parallelism - in_flight
    if state not in ("updating", "rollback_started"):
        return Progress(budget, wait, None)
    rolling_back = state == "rollback_started"
    ratio = update.get("MaxFailureRatio", 0) or 0
    if failures and len(failures) > ratio * max(1, len(keys)):
        action = update.get("FailureAction", "pause")
        culprit = failures[0]["ID"]
        if action == "pause":
            return Progress(0, 0, {**status, "State": "rollback_paused" if rolling_back
                                   else "paused",
                                   "Message": f"{'rollback' if rolling_back else 'update'} "
                                   f"paused due to failure or early termination of task "
                                   f"{culprit}"})
        if action == "rollback" and not rolling_back and svc.get("PreviousSpec"):
            return Progress(0, 0, {"State": "rollback_started", "StartedAt": now(),
                                   "Message": f"update rolled back due to failure or early "
                                   f"termination of task {culprit}"}, roll_back=True)
    if done:
        return Progress(budget, 0, {**status, "State": "rollback_completed" if rolling_back
                                    else "completed", "CompletedAt": now(),
                                    "Message": "rollback completed" if rolling_back
                                    else "update completed"})
    return Progress(budget, wait, None)
