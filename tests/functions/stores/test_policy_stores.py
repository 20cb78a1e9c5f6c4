"""One contract for both PolicyStore adapters: SQLite, and Table Storage on Azurite."""

from __future__ import annotations

import threading
import time

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tuneplane.domain.ids import new_id
from tuneplane.domain.policies import PolicyEventRecord, PolicyRecord, TriggerRecord
from tuneplane.ports import AlreadyExists, Conflict, NotFound


@pytest.fixture(params=["sqlite", "azure"])
def store(request, tmp_path):
    if request.param == "sqlite":
        from tuneplane.stores.sqlite import SqliteDatabase
        from tuneplane.stores.sqlite_policies import SqlitePolicyStore

        db = SqliteDatabase(tmp_path / "t.db")
        yield SqlitePolicyStore(db)
        db.close()
    else:
        from tuneplane.backends.azure_config import AzureSettings
        from tuneplane.stores.azure_policies import AzurePolicyStore

        emulator = request.getfixturevalue("azurite")
        yield AzurePolicyStore.from_settings(AzureSettings(storage_connection_string=emulator.connection_string,
                                                           table_prefix=emulator.unique_name("p")))


def policy(project: str = "alpha", name: str = "nightly", **extra) -> PolicyRecord:
    return PolicyRecord(id=new_id("rtpol"), project=project, created_at=int(time.time()), name=name,
                        blob_prefix={"container": "training-data", "path": name}, model="tiny-random-llama",
                        promotion=None, **extra)


def test_create_get_find_list_delete_with_project_isolation(store):
    first, second = policy(name="a"), policy(name="b")
    other = policy(project="beta", name="a")
    for record in (first, second, other):
        store.create_policy(record)
    assert store.get_policy("alpha", first.id) == first
    assert store.get_policy("beta", first.id) is None
    assert store.find_policy("alpha", "b") == second and store.find_policy("beta", "b") is None
    assert [p.id for p in store.list_policies("alpha")] == [second.id, first.id]  # newest first
    assert [p.id for p in store.list_policies("alpha", limit=1, after=second.id)] == [first.id]
    assert {p.id for p in store.all_policies()} == {first.id, second.id, other.id}
    with pytest.raises(AlreadyExists):
        store.create_policy(policy(name="a"))
    assert store.delete_policy("beta", first.id) is False
    assert store.delete_policy("alpha", first.id) is True
    assert store.get_policy("alpha", first.id) is None and store.find_policy("alpha", "a") is None
    store.create_policy(policy(name="a"))  # the name is free again


def test_update_is_compare_and_swap(store):
    record = policy()
    store.create_policy(record)
    updated = store.update_policy(record.model_copy(update={"promoted_model": "ft:x", "promoted_valid_loss": 1.25}))
    assert updated.version == 1 and store.get_policy("alpha", record.id) == updated
    with pytest.raises(Conflict):
        store.update_policy(record.model_copy(update={"promoted_model": "ft:stale"}))
    with pytest.raises(NotFound):
        store.update_policy(policy(name="ghost"))


def test_trigger_claim_first_writer_wins_even_concurrently(store):
    claims = [TriggerRecord(key="k" * 64, project="alpha", policy_id="rtpol-1", blob="c/p.jsonl", etag="e",
                            outcome="importing", created_at=1, file_id=f"file-{i}") for i in range(4)]
    results: list = []
    threads = [threading.Thread(target=lambda c=c: results.append(store.claim_trigger(c))) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.file_id for r in results}) == 1
    winner = store.get_trigger("k" * 64)
    assert winner.file_id == results[0].file_id
    store.put_trigger(winner.model_copy(update={"outcome": "job_created", "job_id": "ftjob-1"}))
    assert store.get_trigger("k" * 64).outcome == "job_created"
    assert store.get_trigger("0" * 64) is None


def test_events_are_idempotent_and_newest_first(store):
    record = policy()
    store.create_policy(record)
    events = [PolicyEventRecord(id=new_id("rtevent"), policy_id=record.id, created_at=i, message=f"m{i}") for i in range(3)]
    for event in events:
        assert store.append_policy_event("alpha", event) is True
    assert store.append_policy_event("alpha", events[0]) is False
    assert [e.message for e in store.list_policy_events("alpha", record.id)] == ["m2", "m1", "m0"]
    assert [e.message for e in store.list_policy_events("alpha", record.id, after=events[2].id, limit=1)] == ["m1"]
    assert store.list_policy_events("beta", record.id) == []
    store.delete_policy("alpha", record.id)
    assert store.list_policy_events("alpha", record.id) == []
