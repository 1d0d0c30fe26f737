"""The Store protocol and the in-memory half every backend shares."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.errors import Conflict, NotFound
from shoal.model.objects import KINDS, Obj, now

# Kinds whose Spec.Name must be unique (Docker refuses a second service or network by name).
UNIQUE_NAMES = ("service", "network")


@dataclass(frozen=True)
class Event:
    revision: int
    kind: str
    action: str  # "create", "update", "delete"
    obj: Obj  # the object after the change (before it, for a delete)


class Watch:
    """A subscriber's queue of committed transactions, each a list of events."""

    def __init__(self, store: MemoryState) -> None:
        self._store = store
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    async def next(self) -> list[Event]:
        return await self.queue.get()

    def drain(self) -> list[Event]:
        """Everything committed since the last call, without waiting."""
        events: list[Event] = []
        while not self.queue.empty():
            events.extend(self.queue.get_nowait())
        return events

    def close(self) -> None:
        self._store.unwatch(self)


class Transaction:
    """Writes queued against a snapshot; applied by the store only if the block succeeds."""

    def __init__(self, state: MemoryState) -> None:
        self._state = state
        self.writes: dict[tuple[str, str], tuple[str, Obj | None]] = {}

    def get(self, kind: str, obj_id: str) -> Obj | None:
        if (kind, obj_id) in self.writes:
            action, obj = self.writes[(kind, obj_id)]
            return None if action == "delete" else copy.deepcopy(obj)
        return self._state.get(kind, obj_id)

    def create(self, kind: str, obj: Obj) -> Obj:
        if self.get(kind, obj["ID"]) is not None:
            raise Conflict(f"{kind} {obj['ID']} already exists")
        if kind in UNIQUE_NAMES:
            self._check_name_free(kind, obj["Spec"]["Name"], obj["ID"])
        self.writes[(kind, obj["ID"])] = ("create", obj)
        return obj

    def update(self, kind: str, obj: Obj, version: int | None = None) -> Obj:
        """Replace an object. With version, refuse if it changed since the caller read it."""
        current = self.get(kind, obj["ID"])
        if current is None:
            raise NotFound(f"{kind} {obj['ID']} not found")
        if version is not None and current["Version"]["Index"] != version:
            raise Conflict(
                f"update out of sequence: {kind} {obj['ID']} is at version "
                f"{current['Version']['Index']}, not {version}; read it again and retry")
        if kind in UNIQUE_NAMES:
            self._check_name_free(kind, obj["Spec"]["Name"], obj["ID"])
        prior = self.writes.get((kind, obj["ID"]))
        action = "create" if prior and prior[0] == "create" else "update"
        self.writes[(kind, obj["ID"])] = (action, obj)
        return obj

    def delete(self, kind: str, obj_id: str) -> None:
        if self.writes.get((kind, obj_id), ("",))[0] == "delete":
            return  # two controllers' reasons to delete in one pass
        current = self.get(kind, obj_id)
        if current is None:
            raise NotFound(f"{kind} {obj_id} not found")
        self.writes[(kind, obj_id)] = ("delete", current)

    def _check_name_free(self, kind: str, name: str, obj_id: str) -> None:
        for key, (action, obj) in self.writes.items():
            if key[0] == kind and key[1] != obj_id and action != "delete" and obj \
                    and obj["Spec"]["Name"] == name:
                raise Conflict(f"{kind} name {name!r} is already taken")
        other = self._state.by_name(kind, name)
        if other is not None and other["ID"] != obj_id \
                and self.writes.get((kind, other["ID"]), ("",))[0] != "delete":
            raise Conflict(f"{kind} name {name!r} is already taken")


class MemoryState:
    """Objects in memory with a name index, and the watchers. Backends persist around it."""

    def __init__(self) -> None:
        self.revision = 0
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.names: dict[str, dict[str, str]] = {kind: {} for kind in UNIQUE_NAMES}
        self.watchers: list[Watch] = []

    def get(self, kind: str, obj_id: str) -> Obj | None:
        obj = self.objects[kind].get(obj_id)
        return copy.deepcopy(obj) if obj is not None else None

    def by_name(self, kind: str, name: str) -> Obj | None:
        obj_id = self.names[kind].get(name)
        return self.get(kind, obj_id) if obj_id else None

    def list(self, kind: str) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.objects[kind].values()]

    def peek(self, kind: str) -> Iterator[Obj]:
        """The stored objects themselves, no copy: read only, for the controllers' hot loops."""
        return iter(self.objects[kind].values())

    def watch(self) -> Watch:
        w = Watch(self)
        self.watchers.append(w)
        return w

    def unwatch(self, w: Watch) -> None:
        if w in self.watchers:
            self.watchers.remove(w)

    def stamp(self, tx: Transaction) -> list[Event]:
        """Give the transaction's writes the next revision; returns its events (not yet applied)."""
        revision = self.revision + 1
        ts = now()
        events = []
        for (kind, _), (action, obj) in tx.writes.items():
            assert obj is not None
            if action != "delete":
                obj["Version"] = {"Index": revision}
                obj["UpdatedAt"] = ts
            events.append(Event(revision, kind, action, copy.deepcopy(obj)))
        return events

    def load(self, kind: str, obj: Obj) -> None:
        self.objects[kind][obj["ID"]] = obj
        if kind in self.names:
            self.names[kind][obj["Spec"]["Name"]] = obj["ID"]

    def apply(self, events: list[Event]) -> None:
        for ev in events:
            old = self.objects[ev.kind].pop(ev.obj["ID"], None)
            if old is not None and ev.kind in self.names:
                self.names[ev.kind].pop(old["Spec"]["Name"], None)
            if ev.action != "delete":
                self.load(ev.kind, copy.deepcopy(ev.obj))
        if events:
            self.revision = events[0].revision
            for w in self.watchers:
                w.queue.put_nowait(events)


class Store(Protocol):
    revision: int

    def get(self, kind: str, obj_id: str) -> Obj | None: ...
    def by_name(self, kind: str, name: str) -> Obj | None: ...
    def list(self, kind: str) -> list[Obj]: ...
    def peek(self, kind: str) -> Iterator[Obj]: ...
    def watch(self) -> Watch: ...
    def tx(self) -> Any: ...  # a context manager yielding a Transaction
    def close(self) -> None: ...


class BaseStore:
    """A store over MemoryState; a backend implements _persist(events) and _load()."""

    def __init__(self) -> None:
        self._state = MemoryState()

    @property
    def revision(self) -> int:
        return self._state.revision

    def get(self, kind: str, obj_id: str) -> Obj | None:
        return self._state.get(kind, obj_id)

    def by_name(self, kind: str, name: str) -> Obj | None:
        return self._state.by_name(kind, name)

    def list(self, kind: str) -> list[Obj]:
        return self._state.list(kind)

    def peek(self, kind: str) -> Iterator[Obj]:
        return self._state.peek(kind)

    def watch(self) -> Watch:
        return self._state.watch()

    @contextmanager
    def tx(self) -> Iterator[Transaction]:
        """Run the block's writes as one transaction. No await may happen inside the block."""
        tx = Transaction(self._state)
        yield tx
        if not tx.writes:
            return
        events = self._state.stamp(tx)
        self._persist(events)
        self._state.apply(events)

    def _persist(self, events: list[Event]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
