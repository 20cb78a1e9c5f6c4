"""The store contract every adapter passes (see tuneplane.ports): lossless round trips, cursor
pages newest first, project isolation, compare-and-swap, idempotency, atomic content uploads."""

from __future__ import annotations

import threading

import pytest

from tuneplane.domain.ids import new_id
from tuneplane.domain.records import ApiKeyRecord, CheckpointRecord, EventRecord, FileRecord, JobError, JobRecord
from tuneplane.ports import AlreadyExists, Conflict, ContentStore, FileStore, JobStore, KeyStore, NotFound


def a_file(project="p1", purpose="fine-tune", **extra) -> FileRecord:
    fid = new_id("file")
    fields = dict(
        id=fid, project=project, bytes=42, created_at=1_700_000_000, filename="données.jsonl", purpose=purpose,
        content_key=fid, sha256="ab" * 32, format="chat", example_count=12,
    )
    return FileRecord(**(fields | extra))


def a_job(project="p1", **extra) -> JobRecord:
    fields = dict(
        id=new_id("ftjob"), project=project, created_at=1_700_000_000, status="queued", model="tiny-random-llama",
        training_file="file-x", seed=7, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    return JobRecord(**(fields | extra))


def test_adapters_satisfy_the_ports(adapters):
    assert isinstance(adapters.files, FileStore)
    assert isinstance(adapters.jobs, JobStore)
    assert isinstance(adapters.keys, KeyStore)
    assert isinstance(adapters.contents, ContentStore)


# -- files ------------------------------------------------------------------------------------


def test_file_round_trip_and_project_isolation(file_store):
    record = a_file(status_details=None, expires_at=1_800_000_000)
    file_store.create_file(record)
    assert file_store.get_file("p1", record.id) == record
    assert file_store.get_file("p2", record.id) is None
    assert file_store.list_files("p2") == []
    assert file_store.delete_file("p2", record.id) is False
    assert file_store.get_file("p1", record.id) == record


def test_file_create_twice_raises(file_store):
    record = a_file()
    file_store.create_file(record)
    with pytest.raises(AlreadyExists):
        file_store.create_file(record)


def test_file_pages_in_both_orders_and_by_purpose(file_store):
    made = [a_file(purpose="fine-tune" if i % 2 else "batch") for i in range(7)]
    for record in made:
        file_store.create_file(record)
    newest_first = [r.id for r in reversed(made)]
    page1 = file_store.list_files("p1", limit=3)
    page2 = file_store.list_files("p1", limit=3, after=page1[-1].id)
    page3 = file_store.list_files("p1", limit=3, after=page2[-1].id)
    assert [r.id for r in page1 + page2 + page3] == newest_first
    asc = file_store.list_files("p1", limit=4, order="asc")
    asc += file_store.list_files("p1", limit=4, order="asc", after=asc[-1].id)
    assert [r.id for r in asc] == [r.id for r in made]
    tuning = file_store.list_files("p1", purpose="fine-tune")
    assert [r.id for r in tuning] == [r.id for r in reversed(made) if r.purpose == "fine-tune"]


def test_file_delete(file_store):
    record = a_file()
    file_store.create_file(record)
    assert file_store.delete_file("p1", record.id) is True
    assert file_store.get_file("p1", record.id) is None
    assert file_store.delete_file("p1", record.id) is False


# -- jobs -------------------------------------------------------------------------------------


def test_job_round_trip_with_every_field(job_store):
    job = a_job(
        validation_file="file-v", user_provided_suffix="s", metadata={"team": "nlp", "k": "ü"},
        integrations=[{"type": "wandb", "wandb": {"project": "x"}}], peft={"type": "lora", "r": 8},
        error=JobError(code="c", message="m", param=None), result_files=["file-r"], trained_tokens=5,
        estimate={"seconds": 3}, deployment={"status": "ready"}, compute="serverless", deploy=False,
    )
    created, is_new = job_store.create_job(job)
    assert is_new and created == job
    assert job_store.get_job("p1", job.id) == job
    assert job_store.get_job("p2", job.id) is None


def test_job_idempotency_key_returns_the_first_job(job_store):
    first, created = job_store.create_job(a_job(), idempotency_key="retry-1")
    again, created_again = job_store.create_job(a_job(), idempotency_key="retry-1")
    assert created and not created_again and again == first
    other_project, created_other = job_store.create_job(a_job(project="p2"), idempotency_key="retry-1")
    assert created_other and other_project.id != first.id
    assert len(job_store.list_jobs("p1")) == 1


def test_job_idempotency_under_concurrency(job_store):
    results, errors = [], []

    def create():
        try:
            results.append(job_store.create_job(a_job(), idempotency_key="same"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert len(job_store.list_jobs("p1")) == 1


def test_job_pages_and_metadata_filter(job_store):
    made = [a_job(metadata={"team": "a" if i % 2 else "b", "n": str(i)}) for i in range(9)]
    for job in made:
        job_store.create_job(job)
    seen, after = [], None
    while True:
        page = job_store.list_jobs("p1", limit=4, after=after)
        seen += page
        if len(page) < 4:
            break
        after = page[-1].id
    assert [j.id for j in seen] == [j.id for j in reversed(made)]
    team_a = job_store.list_jobs("p1", metadata={"team": "a"})
    assert [j.id for j in team_a] == [j.id for j in reversed(made) if j.metadata["team"] == "a"]
    assert [j.id for j in job_store.list_jobs("p1", metadata={"team": "a", "n": "3"})] == [made[3].id]
    assert job_store.list_jobs("p1", metadata={"team": "zzz"}) == []
    assert job_store.list_jobs("p2") == []


def test_job_compare_and_swap(job_store):
    job, _ = job_store.create_job(a_job())
    updated = job_store.update_job(job.model_copy(update={"status": "running"}))
    assert updated.version == job.version + 1
    assert job_store.get_job("p1", job.id) == updated
    with pytest.raises(Conflict):
        job_store.update_job(job.model_copy(update={"status": "cancelled"}))
    with pytest.raises(NotFound):
        job_store.update_job(a_job())
    with pytest.raises((NotFound, Conflict)):
        job_store.update_job(updated.model_copy(update={"project": "p2"}))


def test_unfinished_jobs_are_oldest_first_across_projects(job_store):
    a, _ = job_store.create_job(a_job(project="p1"))
    b, _ = job_store.create_job(a_job(project="p2"))
    c, _ = job_store.create_job(a_job(project="p1"))
    job_store.update_job(b.model_copy(update={"status": "succeeded"}))
    assert [j.id for j in job_store.list_unfinished_jobs()] == [a.id, c.id]


def test_events_are_idempotent_and_paged_newest_first(job_store):
    job, _ = job_store.create_job(a_job())
    events = [EventRecord(id=new_id("ftevent"), job_id=job.id, created_at=1, message=f"step {i}") for i in range(5)]
    assert all(job_store.append_event("p1", e) for e in events)
    assert job_store.append_event("p1", events[0]) is False
    page1 = job_store.list_events("p1", job.id, limit=3)
    page2 = job_store.list_events("p1", job.id, limit=3, after=page1[-1].id)
    assert [e.id for e in page1 + page2] == [e.id for e in reversed(events)]
    assert job_store.list_events("p2", job.id) == []


def test_checkpoints_are_idempotent_and_paged(job_store):
    job, _ = job_store.create_job(a_job())
    ckpts = [
        CheckpointRecord(
            id=new_id("ftckpt"), job_id=job.id, created_at=1, step_number=i,
            fine_tuned_model_checkpoint=f"ft:x:p1::{job.id}:ckpt-step-{i}", metrics={"train_loss": 1.0 / (i + 1), "valid_loss": None},
        )
        for i in range(4)
    ]
    assert all(job_store.put_checkpoint("p1", c) for c in ckpts)
    assert job_store.put_checkpoint("p1", ckpts[1]) is False
    page = job_store.list_checkpoints("p1", job.id, limit=2)
    page += job_store.list_checkpoints("p1", job.id, limit=2, after=page[-1].id)
    assert page == list(reversed(ckpts))
    assert job_store.list_checkpoints("p2", job.id) == []


# -- keys -------------------------------------------------------------------------------------


def test_keys_find_list_revoke(key_store):
    k1 = ApiKeyRecord(id=new_id("key"), project="p1", key_hash="1" * 64, prefix="tp-abcd", created_at=1)
    k2 = ApiKeyRecord(id=new_id("key"), project="p2", key_hash="2" * 64, prefix="tp-efgh", created_at=2, name="ci")
    key_store.create_key(k1)
    key_store.create_key(k2)
    assert key_store.find_key("1" * 64) == k1
    assert key_store.find_key("3" * 64) is None
    assert [k.id for k in key_store.list_keys("p2")] == [k2.id]
    assert {k.id for k in key_store.list_keys()} == {k1.id, k2.id}
    assert key_store.revoke_key(k1.id) is True
    assert key_store.revoke_key(k1.id) is False
    assert key_store.find_key("1" * 64) is None
    assert key_store.list_keys("p1")[0].revoked_at is not None


# -- contents ---------------------------------------------------------------------------------


def test_content_is_invisible_until_commit(content_store):
    key = new_id("file")
    upload = content_store.begin_upload(key)
    upload.write(b"hello ")
    upload.write(b"world")
    assert not content_store.exists(key)
    upload.commit()
    assert content_store.exists(key)
    assert b"".join(content_store.open_read(key, chunk_size=4)) == b"hello world"
    assert content_store.delete(key) is True
    assert content_store.delete(key) is False
    with pytest.raises(NotFound):
        b"".join(content_store.open_read(key))


def test_content_abort_leaves_nothing(content_store):
    key = new_id("file")
    upload = content_store.begin_upload(key)
    upload.write(b"partial")
    upload.abort()
    upload.abort()
    assert not content_store.exists(key)


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "", ".."])
def test_content_refuses_keys_that_could_escape(content_store, key):
    with pytest.raises(ValueError):
        content_store.begin_upload(key)
