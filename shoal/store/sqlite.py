"""The embedded store: one SQLite file, written in WAL mode, one SQL transaction per revision."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from shoal.errors import ShoalError
from shoal.store.base import BaseStore, Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore(BaseStore):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            # WAL with synchronous=NORMAL: a commit survives a killed process (the case that
            # matters for a manager), and costs no fsync per write.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ShoalError(f"cannot open the store at {path}: {exc}") from exc
        self._load()

    def _load(self) -> None:
        for kind, data in self._db.execute("SELECT kind, data FROM objects"):
            self._state.load(kind, json.loads(data))
        row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        self._state.revision = int(row[0]) if row else 0

    def _persist(self, events: list[Event]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for ev in events:
                if ev.action == "delete":
                    db.execute("DELETE FROM objects WHERE kind = ? AND id = ?",
                               (ev.kind, ev.obj["ID"]))
                else:
                    db.execute("INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)",
                               (ev.kind, ev.obj["ID"], json.dumps(ev.obj)))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)",
                       (str(events[0].revision),))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise ShoalError(f"store write failed: {exc}") from exc

    def close(self) -> None:
        self._db.close()
