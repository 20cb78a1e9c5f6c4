"""The Azure Table stores against a real Azurite: the port rules, plus what is Table-specific
(the order-reversing keys, ETag compare-and-swap, the idempotency batch, the unfinished index)."""

from __future__ import annotations

import threading

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tuneplane.domain.records import ApiKeyRecord, CheckpointRecord, EventRecord, FileRecord, JobRecord
from tuneplane.ports import AlreadyExists, Conflict, FileStore, JobStore, KeyStore, NotFound
from tuneplane.stores.azure_account import StorageAccount
from tuneplane.stores.azure_keys import AzureKeyStore
from tuneplane.stores.azure_tables import AzureFileStore, AzureJobStore, AzureTables, desc

pytestmark = pytest.mark.azurite


@pytest.fixture
def tables(azurite):  # noqa: F811
    return AzureTables(StorageAccount(connection_string=azurite.connection_string), azurite.unique_name("t"))


def file_record(i: int, project: str = "p1", purpose: str = "fine-tune") -> FileRecord:
    return FileRecord(
        id=f"file-{i:06d}", project=project, bytes=10 + i, created_at=1_700_000_000 + i, filename=f"f{i}.jsonl",
        purpose=purpose, content_key=f"{project}/file-{i:06d}", sha256="0" * 64, format="chat", example_count=i,
    )


def job_record(i: int, project: str = "p1", **extra) -> JobRecord:
    fields = dict(
        id=f"ftjob-{i:06d}", project=project, created_at=1_700_000_000 + i, status="queued", model="smollm2",
        training_file="file-000001", seed=i, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    fields.update(extra)
    return JobRecord(**fields)


def test_desc_reverses_order_including_prefixes():
    ids = ["a", "ab", "abc", "b", "ftjob-0001", "ftjob-0002", "ftjob-00021", "é", "~"]
    assert sorted(ids, key=desc) == sorted(ids, reverse=True)


def test_adapters_satisfy_the_ports(tables):
    assert isinstance(AzureFileStore(tables), FileStore)
    assert isinstance(AzureJobStore(tables), JobStore)
    assert isinstance(AzureKeyStore(tables), KeyStore)


def test_files_round_trip_page_in_both_orders_and_isolate_projects(tables):
    store = AzureFileStore(tables)
    for i in range(1, 8):
        store.create_file(file_record(i, purpose="fine-tune" if i % 2 else "batch"))
    store.create_file(file_record(99, project="p2"))
    assert store.get_file("p1", "file-000003") == file_record(3, purpose="fine-tune")
    assert store.get_file("p2", "file-000003") is None
    with pytest.raises(AlreadyExists):
        store.create_file(file_record(3))
    newest = store.list_files("p1", limit=3)
    assert [f.id for f in newest] == ["file-000007", "file-000006", "file-000005"]
    rest = store.list_files("p1", limit=10, after="file-000005")
    assert [f.id for f in rest] == ["file-000004", "file-000003", "file-000002", "file-000001"]
    oldest = store.list_files("p1", limit=2, order="asc", after="file-000002")
    assert [f.id for f in oldest] == ["file-000003", "file-000004"]
    assert [f.id for f in store.list_files("p1", purpose="batch")] == ["file-000006", "file-000004", "file-000002"]
    assert store.delete_file("p2", "file-000001") is False
    assert store.delete_file("p1", "file-000001") is True
    assert store.delete_file("p1", "file-000001") is False
    assert "file-000001" not in [f.id for f in store.list_files("p1", order="asc", limit=100)]


def test_job_create_is_idempotent_by_key_and_atomic(tables):
    store = AzureJobStore(tables)
    first, created = store.create_job(job_record(1), idempotency_key="key-A")
    assert created and first == job_record(1)
    again, created = store.create_job(job_record(2), idempotency_key="key-A")
    assert not created and again.id == "ftjob-000001"
    assert store.get_job("p1", "ftjob-000002") is None  # nothing of the replay was written
    # The same key in another project is a different key.
    other, created = store.create_job(job_record(3, project="p2"), idempotency_key="key-A")
    assert created and other.id == "ftjob-000003"
    # An id clash writes neither the job nor its key.
    with pytest.raises(AlreadyExists):
        store.create_job(job_record(1), idempotency_key="key-B")
    fresh, created = store.create_job(job_record(4), idempotency_key="key-B")
    assert created and fresh.id == "ftjob-000004"


def test_concurrent_creates_with_one_key_make_one_job(tables):
    store = AzureJobStore(tables)
    results: list[tuple[JobRecord, bool]] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.create_job(job_record(10 + i), idempotency_key="same")))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert len(store.list_jobs("p1", limit=100)) == 1


def test_update_job_is_compare_and_swap(tables):
    store = AzureJobStore(tables)
    job, _ = store.create_job(job_record(1))
    running = store.update_job(job.model_copy(update={"status": "running"}))
    assert running.version == 1 and store.get_job("p1", job.id).status == "running"
    with pytest.raises(Conflict):
        store.update_job(job.model_copy(update={"status": "failed"}))  # stale version 0
    with pytest.raises(NotFound):
        store.update_job(job_record(42))
    with pytest.raises(NotFound):
        store.update_job(running.model_copy(update={"project": "p2"}))  # another project's job is missing


def test_racing_updates_let_exactly_one_win(tables):
    store = AzureJobStore(tables)
    job, _ = store.create_job(job_record(1))
    outcomes: list[str] = []

    def update(status: str) -> None:
        try:
            store.update_job(job.model_copy(update={"status": status}))
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=update, args=(s,)) for s in ("running", "cancelled", "failed", "paused")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "ok"]
    assert store.get_job("p1", job.id).version == 1


def test_list_jobs_pages_newest_first_with_metadata_filter(tables):
    store = AzureJobStore(tables)
    for i in range(1, 7):
        store.create_job(job_record(i, metadata={"team": "a" if i % 2 else "b", "odd key!": str(i % 3)}))
    assert [j.id for j in store.list_jobs("p1", limit=2)] == ["ftjob-000006", "ftjob-000005"]
    assert [j.id for j in store.list_jobs("p1", limit=2, after="ftjob-000005")] == ["ftjob-000004", "ftjob-000003"]
    assert [j.id for j in store.list_jobs("p1", metadata={"team": "a"})] == ["ftjob-000005", "ftjob-000003", "ftjob-000001"]
    both = store.list_jobs("p1", metadata={"team": "a", "odd key!": "0"})
    assert [j.id for j in both] == ["ftjob-000003"]
    assert store.list_jobs("p1", metadata={"team": "zzz"}) == []
    assert store.list_jobs("p2") == []


def test_unfinished_jobs_are_a_fifo_across_projects(tables):
    store = AzureJobStore(tables)
    store.create_job(job_record(3, project="p2"))
    a, _ = store.create_job(job_record(1))
    store.create_job(job_record(2))
    store.create_job(job_record(4, status="succeeded"))
    assert [j.id for j in store.list_unfinished_jobs()] == ["ftjob-000001", "ftjob-000002", "ftjob-000003"]
    store.update_job(a.model_copy(update={"status": "cancelled"}))
    assert [j.id for j in store.list_unfinished_jobs()] == ["ftjob-000002", "ftjob-000003"]


def test_an_orphaned_hint_is_ignored_then_pruned(tables):
    # A crash between the hint and the job's batch leaves a hint with no job behind it.
    store = AzureJobStore(tables)
    tables["unfinished"].upsert_entity({"PartitionKey": "unfinished", "RowKey": "ftjob-ghost", "project": "p1"})
    assert store.list_unfinished_jobs() == []
    assert len(list(tables["unfinished"].list_entities())) == 1  # still within the grace period
    assert AzureJobStore(tables, orphan_grace_s=-1).list_unfinished_jobs() == []
    assert list(tables["unfinished"].list_entities()) == []


def test_events_and_checkpoints_are_idempotent_and_newest_first(tables):
    store = AzureJobStore(tables)
    for i in range(1, 5):
        event = EventRecord(id=f"ftevent-{i:04d}", job_id="ftjob-1", created_at=i, message=f"step {i}",
                            type="metrics", data={"step": i, "train_loss": 1.0 / i})
        assert store.append_event("p1", event) is True
        assert store.append_event("p1", event) is False
    assert [e.id for e in store.list_events("p1", "ftjob-1", limit=2)] == ["ftevent-0004", "ftevent-0003"]
    assert [e.id for e in store.list_events("p1", "ftjob-1", after="ftevent-0003")] == ["ftevent-0002", "ftevent-0001"]
    assert store.list_events("p2", "ftjob-1") == []
    assert store.list_events("p1", "ftjob-1")[0].data == {"step": 4, "train_loss": 0.25}
    for step in (10, 20):
        ckpt = CheckpointRecord(id=f"ftckpt-{step:04d}", job_id="ftjob-1", created_at=step, step_number=step,
                                fine_tuned_model_checkpoint=f"ft:m:p::x:ckpt-step-{step}", metrics={"train_loss": None},
                                location=f"azureml://jobs/x/outputs/model/paths/checkpoints/checkpoint-{step}")
        assert store.put_checkpoint("p1", ckpt) is True
        assert store.put_checkpoint("p1", ckpt) is False
    listed = store.list_checkpoints("p1", "ftjob-1")
    assert [c.step_number for c in listed] == [20, 10] and listed[0].metrics == {"train_loss": None}
    assert [e.id for e in store.list_events("p1", "ftjob-1", limit=100)][-1] == "ftevent-0001"  # kinds stay apart


def test_large_records_span_several_properties(tables):
    store = AzureJobStore(tables)
    big = job_record(1, integrations=[{"type": "wandb", "wandb": {"notes": "x" * 100_000}}])
    store.create_job(big)
    assert store.get_job("p1", big.id) == big


def test_keys_find_list_and_revoke(tables):
    store = AzureKeyStore(tables)
    k1 = ApiKeyRecord(id="key-1", project="p1", key_hash="a" * 64, prefix="tp-aaaa", created_at=1)
    k2 = ApiKeyRecord(id="key-2", project="p2", key_hash="b" * 64, prefix="tp-bbbb", created_at=2, name="ci")
    store.create_key(k1)
    store.create_key(k2)
    with pytest.raises(AlreadyExists):
        store.create_key(k1.model_copy(update={"key_hash": "c" * 64}))
    assert store.find_key("c" * 64) is None  # the failed batch left no hash row behind
    assert store.find_key("a" * 64) == k1
    assert store.find_key("../x") is None
    assert [k.id for k in store.list_keys()] == ["key-1", "key-2"]
    assert store.list_keys("p2") == [k2]
    assert store.revoke_key("key-1") is True
    assert store.revoke_key("key-1") is False
    assert store.find_key("a" * 64) is None
    assert store.list_keys("p1")[0].revoked_at is not None
    assert store.revoke_key("key-404") is False


def test_a_refused_credential_names_the_setting(azurite):  # noqa: F811
    from tests.azurite import ACCOUNT_KEY
    from tuneplane.ports import BackendMisconfigured
    from tuneplane.stores.azure_blob import AzureBlobContentStore

    wrong = azurite.connection_string.replace(ACCOUNT_KEY, "d3Jvbmcta2V5" * 8)
    with pytest.raises(BackendMisconfigured) as caught:
        AzureTables(StorageAccount(connection_string=wrong), azurite.unique_name("t"))
    assert caught.value.setting == "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"
    with pytest.raises(BackendMisconfigured):
        AzureBlobContentStore(StorageAccount(connection_string=wrong), azurite.unique_name("c"))
