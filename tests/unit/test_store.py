"""The SQLite store: revisions, versions, name uniqueness, durability, the change feed."""

import pytest

from shoal.errors import Conflict, NotFound
from shoal.model.objects import new_id, now
from shoal.store import SQLiteStore


def service(name: str) -> dict:
    ts = now()
    return {"ID": new_id(), "Version": {"Index": 0}, "CreatedAt": ts, "UpdatedAt": ts,
            "Spec": {"Name": name}}


def test_each_transaction_is_one_revision_stamped_on_its_objects(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    a, b = service("a"), service("b")
    with store.tx() as tx:
        tx.create("service", a)
        tx.create("service", b)
    assert store.revision == 1
    assert store.get("service", a["ID"])["Version"]["Index"] == 1
    with store.tx() as tx:
        tx.update("service", store.get("service", a["ID"]))
    assert store.get("service", a["ID"])["Version"]["Index"] == 2
    assert store.get("service", b["ID"])["Version"]["Index"] == 1


def test_stale_version_is_refused_and_changes_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    a = service("a")
    with store.tx() as tx:
        tx.create("service", a)
    fresh = store.get("service", a["ID"])
    fresh["Spec"]["Labels"] = {"x": "1"}
    with pytest.raises(Conflict, match="out of sequence"), store.tx() as tx:
        tx.update("service", fresh, version=0)
    assert "Labels" not in store.get("service", a["ID"])["Spec"]
    assert store.revision == 1


def test_names_are_unique_per_kind(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    with store.tx() as tx:
        tx.create("service", service("web"))
    with pytest.raises(Conflict, match="already taken"), store.tx() as tx:
        tx.create("service", service("web"))
    with store.tx() as tx:
        tx.create("network", service("web"))  # another kind: fine
    assert len(store.list("service")) == 1


def test_failed_block_writes_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(NotFound), store.tx() as tx:
        tx.create("service", service("a"))
        tx.delete("service", "missing")
    assert store.list("service") == [] and store.revision == 0


def test_everything_survives_a_reopen(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    a = service("a")
    with store.tx() as tx:
        tx.create("service", a)
    with store.tx() as tx:
        tx.delete("service", a["ID"])
        tx.create("service", service("b"))
    store.close()
    again = SQLiteStore(tmp_path / "s.db")
    assert [s["Spec"]["Name"] for s in again.list("service")] == ["b"]
    assert again.revision == 2
    assert again.by_name("service", "b") is not None and again.by_name("service", "a") is None


async def test_watch_gets_each_commit_in_order(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    watch = store.watch()
    a = service("a")
    with store.tx() as tx:
        tx.create("service", a)
    with store.tx() as tx:
        tx.delete("service", a["ID"])
    first, second = await watch.next(), await watch.next()
    assert [(e.revision, e.action) for e in first + second] == [(1, "create"), (2, "delete")]
