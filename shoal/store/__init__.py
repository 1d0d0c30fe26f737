"""The cluster store: objects by kind and id, one revision per transaction, a change feed.

Every write is a transaction: it either commits whole, bumping the store's revision by one and
stamping each object it wrote with that revision (the object's Version.Index, which the API's
`?version=N` compares against), or changes nothing. Watchers get each committed transaction's
events in order. Reads come from memory; the backend (SQLite by default) makes writes durable,
so a restarted manager finds every object as it was.
"""

from __future__ import annotations

from shoal.store.base import Event, Store, Transaction, Watch
from shoal.store.sqlite import SQLiteStore

__all__ = ["Event", "SQLiteStore", "Store", "Transaction", "Watch"]
