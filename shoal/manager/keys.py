"""The cluster's WireGuard preshared key and its rotation (docs/encryption.md).

The leader makes a random 32-byte key and replaces it every `interval` (12 hours by default,
`shoal manager --encryption-key-rotation`, at least a minute). The key, its generation and
when it was made live in the Cluster object (Cluster.Shoal.Encryption), so a restarted manager
keeps both the key and the schedule; the API never shows the key itself (`public_cluster`).
Every node with an encrypted network gets it in its NodeView's "keys" section, and its agent
sets it on each WireGuard peer.

Why rotation loses no traffic: in WireGuard a preshared key is mixed in at the handshake, so
setting a new one on a live peer changes nothing until that peer's next handshake (every 2
minutes, or after a loss); the running session keeps its keys. The manager pushes the new
key to every node in one pass (milliseconds apart); a handshake that falls in that window
fails once and WireGuard retries it (after 5 s) while the old session still carries traffic.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import secrets
import time
from collections.abc import Callable

from shoal.errors import InvalidArgument
from shoal.model.objects import Obj
from shoal.store.base import BaseStore

DEFAULT_INTERVAL = 12 * 3600.0
MIN_INTERVAL = 60.0
MIN_TEST_INTERVAL = 1.0  # the floor with the test-only override
# Allow intervals below MIN_INTERVAL (tests of rotation under load). Never set in production:
# the lab's tests set it for the processes they start (as SHOAL_TEST_SHORT_CERTS).
SHORT_ROTATION_ENV = "SHOAL_TEST_SHORT_ROTATION"
# The manager flag's default, so that a lab (whose argv is fixed) can be given another.
INTERVAL_ENV = "SHOAL_ENCRYPTION_KEY_ROTATION"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhd]))+$")


def parse_interval(text: str) -> float:
    """"12h", "90s", "1h30m" or plain seconds -> seconds, checked against the minimum."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        if not _DURATION.match(text):
            raise InvalidArgument(f"invalid key rotation interval {text!r}: use e.g. 12h, "
                                  "30m, 90s") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])",
                                                                    text))
    floor = MIN_TEST_INTERVAL if os.environ.get(SHORT_ROTATION_ENV) == "1" else MIN_INTERVAL
    if seconds < floor:
        raise InvalidArgument(f"key rotation interval {text!r} is below the minimum of "
                              f"{floor:g}s")
    return seconds


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def of(cluster: Obj) -> Obj:
    """The cluster's key record: {"Key", "Generation", "RotatedAt", "Interval"}, {} if none."""
    return (cluster.get("Shoal") or {}).get("Encryption") or {}


def public_cluster(cluster: Obj) -> Obj:
    """The cluster as the API shows it: the key's generation and age, not the key."""
    if not of(cluster):
        return cluster
    out = copy.deepcopy(cluster)
    out["Shoal"]["Encryption"].pop("Key", None)
    return out


class KeyRotator:
    """A controller: each tick rotates the key if it is due and asks to be woken when the next
    rotation is. `clock` is wall time (the schedule survives restarts); `wake_at` takes a
    monotonic time, as the manager loop's timer does."""

    def __init__(self, store: BaseStore, interval: float, wake_at: Callable[[float], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.interval = interval
        self.wake_at = wake_at
        self.clock = clock

    def tick(self) -> None:
        cluster = self.store.list("cluster")[0]
        record = of(cluster)
        now = self.clock()
        due = float(record.get("RotatedAt", 0)) + self.interval if record.get("Key") else now
        if now >= due:
            self.rotate(cluster, now)
            due = now + self.interval
        # Asked again on every tick: the manager keeps one timer (the earliest asked for), and
        # a timer may fire a little before the wall clock says the key is due.
        self.wake_at(time.monotonic() + max(0.0, due - now))

    def rotate(self, cluster: Obj, now: float) -> None:
        cluster = copy.deepcopy(cluster)
        generation = int(of(cluster).get("Generation", 0)) + 1
        cluster.setdefault("Shoal", {})["Encryption"] = {
            "Key": new_key(), "Generation": generation, "RotatedAt": now,
            "Interval": self.interval}
        with self.store.tx() as tx:
            tx.update("cluster", cluster)
