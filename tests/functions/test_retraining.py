"""Event-driven retraining: the policies API, and the BlobCreated handler called as the Functions host
calls it (``training_blob_created`` with constructed ``func.EventGridEvent`` objects), reading blobs
from the local inbox; and the promotion gate."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import threading
import time
import uuid

import azure.functions as func
import pytest

from tests.conftest import chat_jsonl
from tests.functions.function_app_harness import load
from tuneplane.domain.ids import new_id
from tuneplane.domain.policies import PolicyRecord
from tuneplane.domain.records import EventRecord, JobRecord
from tuneplane.ports import NotFound
from tuneplane.retraining import BlobCreated, PromotionGate, RetrainingHandler
from tuneplane.services.keys import issue_key
from tuneplane.webhooks import sign


@pytest.fixture(scope="module")
def loaded():
    return load()


def api(loaded, method: str, path: str, payload: dict | None = None, *, key: str | None = None):
    kwargs = {"key": key} if key else {}
    body = json.dumps(payload).encode() if payload is not None else b""
    response = loaded.http(method, f"/v1{path}", body=body, headers={"Content-Type": "application/json"}, **kwargs)
    return response.status_code, json.loads(response.get_body() or b"null")


def new_container() -> str:
    return f"data-{uuid.uuid4().hex[:10]}"


def create_policy(loaded, container: str, **fields) -> dict:
    body = {"name": f"p{uuid.uuid4().hex[:8]}", "blob_prefix": {"container": container, "path": "support"},
            "model": "tiny-random-llama", "promotion": None, "hyperparameters": {"n_epochs": 1}, **fields}
    status, policy = api(loaded, "POST", "/retraining_policies", body)
    assert status == 200, policy
    return policy


def drop(loaded, container: str, path: str, content: bytes) -> None:
    target = loaded.home / "inbox" / container / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


def deliver(loaded, container: str, path: str, *, etag: str = "0x8D0001", event_id: str | None = None) -> None:
    event = func.EventGridEvent(
        id=event_id or str(uuid.uuid4()), topic="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a",
        subject=f"/blobServices/default/containers/{container}/blobs/{path}", event_type="Microsoft.Storage.BlobCreated",
        event_time=datetime.datetime.now(datetime.timezone.utc), data_version="",
        data={"api": "PutBlob", "eTag": etag, "contentType": "application/jsonl", "blobType": "BlockBlob",
              "url": f"https://a.blob.core.windows.net/{container}/{path}"},
    )
    loaded.user_function("training_blob_created")(event)


def jobs_of(loaded, policy: dict, project: str = "default") -> list[JobRecord]:
    return loaded.state.adapters.jobs.list_jobs(project, limit=100, metadata={"retraining_policy": policy["id"]})


def policy_events(loaded, policy: dict) -> list[dict]:
    status, events = api(loaded, "GET", f"/retraining_policies/{policy['id']}/events")
    assert status == 200
    return events["data"]


def file_ids(loaded) -> set[str]:
    return {f.id for f in loaded.state.adapters.files.list_files("default", limit=10_000)}


# -- the policies API ----------------------------------------------------------------------------


def test_policies_crud_with_project_isolation(loaded):
    container = new_container()
    policy = create_policy(loaded, container, min_interval_seconds=60)
    assert policy["object"] == "retraining_policy"
    assert policy["blob_prefix"] == {"container": container, "path": "support/"}
    assert api(loaded, "GET", f"/retraining_policies/{policy['id']}")[1]["name"] == policy["name"]
    assert policy["id"] in [p["id"] for p in api(loaded, "GET", "/retraining_policies?limit=100")[1]["data"]]

    _, other_key = issue_key(loaded.state.adapters.keys, "other-project", name="test")
    assert api(loaded, "GET", f"/retraining_policies/{policy['id']}", key=other_key)[0] == 404
    assert api(loaded, "DELETE", f"/retraining_policies/{policy['id']}", key=other_key)[0] == 404
    assert api(loaded, "GET", "/retraining_policies", key=other_key)[1]["data"] == []
    # Another project may not watch (a prefix overlapping) this project's data.
    status, error = api(loaded, "POST", "/retraining_policies", key=other_key, payload={
        "name": "steal", "blob_prefix": {"container": container, "path": ""}, "model": "tiny-random-llama", "promotion": None})
    assert status == 409 and error["error"]["param"] == "blob_prefix"

    assert api(loaded, "DELETE", f"/retraining_policies/{policy['id']}") == (200, {"id": policy["id"], "object": "retraining_policy.deleted", "deleted": True})
    assert api(loaded, "GET", f"/retraining_policies/{policy['id']}")[0] == 404


@pytest.mark.parametrize("change, param", [
    ({"blob_prefix": {"container": "Bad_Container", "path": "x"}}, "blob_prefix.container"),
    ({"blob_prefix": {"container": "okay-name", "path": "a/../b"}}, "blob_prefix.path"),
    ({"model": "no-such-model"}, "model"),
    ({"model": "lineage:no-such-policy"}, "model"),
    ({"promotion": {"margin": 0.1}}, "validation_file"),
    ({"promotion": {"margin": -1}, "validation_file": "file-x"}, "promotion.margin"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"min_interval_seconds": -5}, "min_interval_seconds"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"validation_file": "file-missing", "promotion": None}, "validation_file"),
])
def test_invalid_policies_are_refused_naming_the_field(loaded, change, param):
    body = {"name": "bad", "blob_prefix": {"container": new_container(), "path": ""}, "model": "tiny-random-llama",
            "promotion": None, **change}
    before = api(loaded, "GET", "/retraining_policies?limit=100")[1]["data"]
    status, error = api(loaded, "POST", "/retraining_policies", body)
    assert status == 400, error
    assert error["error"]["param"] == param
    assert api(loaded, "GET", "/retraining_policies?limit=100")[1]["data"] == before


def test_duplicate_policy_name_conflicts(loaded):
    policy = create_policy(loaded, new_container())
    status, error = api(loaded, "POST", "/retraining_policies", {
        "name": policy["name"], "blob_prefix": {"container": new_container()}, "model": "tiny-random-llama", "promotion": None})
    assert status == 409 and error["error"]["param"] == "name"


# -- the BlobCreated handler ---------------------------------------------------------------------


def test_a_matching_blob_starts_one_job_with_its_lineage_in_metadata(loaded):
    container = new_container()
    policy = create_policy(loaded, container, suffix="nightly")
    drop(loaded, container, "support/2026-11-23.jsonl", chat_jsonl(12))
    deliver(loaded, container, "support/2026-11-23.jsonl", etag="0x8DC1")
    [job] = jobs_of(loaded, policy)
    assert job.status == "queued" and job.model == "tiny-random-llama" and job.user_provided_suffix == "nightly"
    assert job.metadata == {"retraining_policy": policy["id"], "trigger_blob": f"{container}/support/2026-11-23.jsonl",
                            "trigger_etag": "0x8DC1", "parent_model": "tiny-random-llama"}
    training = loaded.state.adapters.files.get_file("default", job.training_file)
    assert training.purpose == "fine-tune" and training.filename == "2026-11-23.jsonl" and training.example_count == 12
    assert job.method["supervised"]["hyperparameters"]["n_epochs"] == 1
    assert any(job.id in e["message"] for e in policy_events(loaded, policy))


def test_a_blob_no_policy_covers_starts_nothing(loaded):
    container = new_container()
    policy = create_policy(loaded, container)
    files_before = file_ids(loaded)
    for path in ("elsewhere/a.jsonl", "supportive/b.jsonl"):  # 'support/' is a folder, not a name prefix
        drop(loaded, container, path, chat_jsonl(12))
        deliver(loaded, container, path)
    drop(loaded, new_container(), "support/c.jsonl", chat_jsonl(12))
    assert jobs_of(loaded, policy) == []
    assert file_ids(loaded) == files_before


def test_other_events_and_malformed_subjects_are_ignored(loaded):
    container = new_container()
    policy = create_policy(loaded, container)
    drop(loaded, container, "support/x.jsonl", chat_jsonl(12))
    now = datetime.datetime.now(datetime.timezone.utc)
    for event_type, subject in [
        ("Microsoft.Storage.BlobDeleted", f"/blobServices/default/containers/{container}/blobs/support/x.jsonl"),
        ("Microsoft.Storage.BlobCreated", f"/blobServices/default/containers/{container}"),
        ("Microsoft.Storage.BlobCreated", "/somewhere/else"),
    ]:
        loaded.user_function("training_blob_created")(func.EventGridEvent(
            id=str(uuid.uuid4()), topic="/t", subject=subject, event_type=event_type, event_time=now, data_version="", data={}))
    assert jobs_of(loaded, policy) == []
    assert policy_events(loaded, policy) == []


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.received.append((dict(self.headers), body.decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_invalid_file_records_an_event_sends_a_webhook_and_starts_nothing(loaded):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, endpoint = api(loaded, "POST", "/webhook_endpoints", {
            "name": "ops", "url": f"http://127.0.0.1:{server.server_port}/hook", "event_types": ["fine_tuning.job.failed"]})
        assert status == 200, endpoint
        container = new_container()
        policy = create_policy(loaded, container)
        files_before = file_ids(loaded)
        bad = chat_jsonl(12).replace(b'"role": "assistant"', b'"role": "robot"', 1)
        drop(loaded, container, "support/bad.jsonl", bad)
        deliver(loaded, container, "support/bad.jsonl", etag="0xBAD")
        assert jobs_of(loaded, policy) == []
        assert file_ids(loaded) == files_before  # nothing half-imported
        [event] = [e for e in policy_events(loaded, policy) if e["level"] == "error"]
        assert "support/bad.jsonl" in event["message"] and "line 1" in event["message"]
        assert event["data"]["code"]
        deadline = time.monotonic() + 30
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        headers, body = Receiver.received[-1]
        payload = json.loads(body)
        assert payload["type"] == "retraining.file_invalid"
        assert payload["data"]["policy_id"] == policy["id"] and payload["data"]["blob"] == f"{container}/support/bad.jsonl"
        assert headers["webhook-signature"] == sign(endpoint["signing_secret"], headers["webhook-id"], int(headers["webhook-timestamp"]), body)
        # A redelivery of the invalid blob records nothing new.
        deliver(loaded, container, "support/bad.jsonl", etag="0xBAD")
        assert len([e for e in policy_events(loaded, policy) if e["level"] == "error"]) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_unusable_or_missing_blobs_start_nothing_and_leave_nothing(loaded):
    from tests.conftest import dpo_jsonl

    container = new_container()
    policy = create_policy(loaded, container)
    files_before = file_ids(loaded)
    drop(loaded, container, "support/few.jsonl", chat_jsonl(3))  # valid lines, too few examples
    deliver(loaded, container, "support/few.jsonl")
    drop(loaded, container, "support/prefs.jsonl", dpo_jsonl(12))  # preference data for a supervised policy
    deliver(loaded, container, "support/prefs.jsonl")
    deliver(loaded, container, "support/gone.jsonl")  # deleted before the event arrived
    assert jobs_of(loaded, policy) == []
    assert file_ids(loaded) == files_before
    messages = {e["data"]["blob"].rsplit("/", 1)[-1]: e for e in policy_events(loaded, policy)}
    assert messages["few.jsonl"]["level"] == "error" and "at least 10" in messages["few.jsonl"]["message"]
    assert messages["prefs.jsonl"]["data"]["code"] == "invalid_file_format"
    assert messages["gone.jsonl"]["level"] == "warn" and "no longer exists" in messages["gone.jsonl"]["message"]


def test_duplicate_deliveries_start_exactly_one_job(loaded):
    container = new_container()
    policy = create_policy(loaded, container)
    drop(loaded, container, "support/d.jsonl", chat_jsonl(12))
    files_before = file_ids(loaded)
    for _ in range(3):  # the same event, three times
        deliver(loaded, container, "support/d.jsonl", etag="0xE1", event_id="event-1")
    deliver(loaded, container, "support/d.jsonl", etag="0xE1", event_id="event-2")  # same blob and etag, new id
    [job] = jobs_of(loaded, policy)
    assert len(file_ids(loaded) - files_before) == 1
    # Concurrent deliveries (Event Grid may send them at once) still make one job.
    drop(loaded, container, "support/e.jsonl", chat_jsonl(12))
    threads = [threading.Thread(target=deliver, args=(loaded, container, "support/e.jsonl"), kwargs={"etag": "0xE2"})
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(jobs_of(loaded, policy)) == 2
    assert len(file_ids(loaded) - files_before) == 2
    # A new version of a blob (new etag) is new data: it starts a job.
    deliver(loaded, container, "support/d.jsonl", etag="0xE3")
    assert len(jobs_of(loaded, policy)) == 3


def test_debounce_skips_blobs_within_the_minimum_interval(loaded):
    container = new_container()
    policy = create_policy(loaded, container, min_interval_seconds=3600)
    for name in ("a", "b"):
        drop(loaded, container, f"support/{name}.jsonl", chat_jsonl(12))
    deliver(loaded, container, "support/a.jsonl", etag="0xA")
    deliver(loaded, container, "support/b.jsonl", etag="0xB")
    [job] = jobs_of(loaded, policy)
    assert job.metadata["trigger_blob"].endswith("support/a.jsonl")
    assert any("b.jsonl" in e["message"] and "3600s" in e["message"] for e in policy_events(loaded, policy))

    # Once the interval has passed, the next blob starts a job (same stores, a later clock).
    state = loaded.state
    later = RetrainingHandler(state.adapters.policies, state.files, state.jobs, state.retraining.source,
                              clock=lambda: time.time() + 3601)
    later.blob_created(BlobCreated(event_id="late", container=container, path="support/b.jsonl", etag="0xB2"))
    assert len(jobs_of(loaded, policy)) == 2


def test_lineage_waits_for_a_promoted_model_then_continues_from_it(loaded):
    container = new_container()
    name = f"lin{uuid.uuid4().hex[:6]}"
    policy = create_policy(loaded, container, name=name, model=f"lineage:{name}", peft={"type": "full"})
    drop(loaded, container, "support/l.jsonl", chat_jsonl(12))
    deliver(loaded, container, "support/l.jsonl", etag="0xL")
    assert jobs_of(loaded, policy) == []
    assert any("no promoted model" in e["message"] for e in policy_events(loaded, policy))

    # Once the policy has promoted a model, the next blob trains on top of it.
    jobs, store = loaded.state.adapters.jobs, loaded.state.adapters.policies
    source = JobRecord(id=new_id("ftjob"), project="default", created_at=int(time.time()), status="succeeded",
                       model="tiny-random-llama", training_file="file-x", seed=1,
                       method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    source = source.model_copy(update={"fine_tuned_model": f"ft:tiny-random-llama:default::{source.id}"})
    jobs.create_job(source)
    current = store.get_policy("default", policy["id"])
    store.update_policy(current.model_copy(update={"promoted_model": source.fine_tuned_model, "promoted_job": source.id}))
    drop(loaded, container, "support/l2.jsonl", chat_jsonl(12))
    deliver(loaded, container, "support/l2.jsonl", etag="0xL2")
    [job] = jobs_of(loaded, policy)
    assert job.model == source.fine_tuned_model and job.metadata["parent_model"] == source.fine_tuned_model
    assert job.peft["type"] == "full"


def test_an_adapter_lineage_is_accepted_and_continues_from_the_last_promoted_adapter(loaded):
    # Adapters continue too (init_adapter): a lineage policy no longer needs peft.type full.
    container = new_container()
    name = f"lin{uuid.uuid4().hex[:6]}"
    policy = create_policy(loaded, container, name=name, model=f"lineage:{name}", peft={"type": "dora", "r": 4})
    assert policy["peft"]["type"] == "dora"
    jobs, store = loaded.state.adapters.jobs, loaded.state.adapters.policies
    for round_, etag in enumerate(("0xA1", "0xA2")):
        # Each promotion moves the lineage on: the next job starts from the newest promoted adapter.
        source = JobRecord(id=new_id("ftjob"), project="default", created_at=int(time.time()), status="succeeded",
                           model="tiny-random-llama", training_file="file-x", seed=1, peft={"type": "dora", "r": 4},
                           method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
        source = source.model_copy(update={"fine_tuned_model": f"ft:tiny-random-llama:default::{source.id}"})
        jobs.create_job(source)
        current = store.get_policy("default", policy["id"])
        store.update_policy(current.model_copy(update={"promoted_model": source.fine_tuned_model, "promoted_job": source.id}))
        drop(loaded, container, f"support/a{round_}.jsonl", chat_jsonl(12))
        deliver(loaded, container, f"support/a{round_}.jsonl", etag=etag)
        started = jobs_of(loaded, policy)
        assert len(started) == round_ + 1
        [newest] = [j for j in started if j.model == source.fine_tuned_model]
        assert newest.metadata["parent_model"] == source.fine_tuned_model
        assert newest.peft["type"] == "dora" and newest.peft["r"] == 4


# -- the promotion gate --------------------------------------------------------------------------


def _finished_job(loaded, policy_id: str, valid_loss: float | None) -> JobRecord:
    jobs = loaded.state.adapters.jobs
    job = JobRecord(id=new_id("ftjob"), project="default", created_at=int(time.time()), status="running",
                    model="tiny-random-llama", training_file="file-x", seed=1, metadata={"retraining_policy": policy_id},
                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    jobs.create_job(job)
    for step, loss in ((1, 9.0), (2, valid_loss)):
        jobs.append_event("default", EventRecord(id=new_id("ftevent"), job_id=job.id, created_at=int(time.time()),
                                                 type="metrics", message=f"Step {step}",
                                                 data={"step": step, "train_loss": 1.0, "valid_loss": loss}))
    return job


def _gate_policy(loaded, margin: float) -> PolicyRecord:
    store = loaded.state.adapters.policies
    record = PolicyRecord(id=new_id("rtpol"), project="default", created_at=int(time.time()), name=f"g{uuid.uuid4().hex[:8]}",
                          blob_prefix={"container": new_container()}, model="tiny-random-llama", validation_file="file-v",
                          promotion={"margin": margin})
    store.create_policy(record)
    return record


def test_promotion_gate_promotes_a_better_model_and_keeps_the_current_one_otherwise(loaded):
    store, jobs = loaded.state.adapters.policies, loaded.state.adapters.jobs
    policy = _gate_policy(loaded, margin=0.1)
    gate = PromotionGate(store, jobs)

    first = _finished_job(loaded, policy.id, 2.0)
    assert gate.decide(first, "ft:first")[0] is True  # nothing deployed yet
    gate.promoted(first, "ft:first", {"status": "succeeded"})
    current = store.get_policy("default", policy.id)
    assert (current.promoted_model, current.promoted_job, current.promoted_valid_loss) == ("ft:first", first.id, 2.0)

    within_margin = _finished_job(loaded, policy.id, 1.95)
    promote, reason = gate.decide(within_margin, "ft:close")
    assert promote is False and "1.9500" in reason and "2.0000" in reason and "0.1" in reason
    assert store.get_policy("default", policy.id).promoted_model == "ft:first"

    better = _finished_job(loaded, policy.id, 1.5)
    assert gate.decide(better, "ft:better")[0] is True
    gate.promoted(better, "ft:better", {"status": "succeeded"})
    assert store.get_policy("default", policy.id).promoted_model == "ft:better"
    assert gate.decide(better, "ft:better") == (True, "already promoted")  # a repeated pass agrees

    no_loss = _finished_job(loaded, policy.id, None)
    assert gate.decide(no_loss, "ft:blind")[0] is False
    failed_deploy = _finished_job(loaded, policy.id, 0.1)
    gate.promoted(failed_deploy, "ft:broken", {"status": "failed"})
    assert store.get_policy("default", policy.id).promoted_model == "ft:better"

    messages = [e.message for e in store.list_policy_events("default", policy.id, limit=100)]
    assert any(m.startswith("Not promoting ft:close") for m in messages)
    assert any(m == "Promoted ft:better" for m in messages)


def test_promotion_gate_ignores_jobs_no_policy_started(loaded):
    gate = PromotionGate(loaded.state.adapters.policies, loaded.state.adapters.jobs)
    job = _finished_job(loaded, "rtpol-none", 1.0).model_copy(update={"metadata": None})
    assert gate.decide(job, "ft:plain") is None


# -- the inbox feed ------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.blobs: list[BlobCreated] = []

    def blob_created(self, blob: BlobCreated):
        self.blobs.append(blob)
        return []


def test_inbox_feed_picks_up_only_whole_quiescent_files(tmp_path):
    from tuneplane.inbox import InboxFeed

    now = [time.time() + 100]  # the feed's clock; file mtimes are real
    recorder = Recorder()
    feed = InboxFeed(tmp_path, recorder, quiet_seconds=5, clock=lambda: now[0])
    folder = tmp_path / "training-data" / "support"
    folder.mkdir(parents=True)
    growing = folder / "day.jsonl"
    growing.write_bytes(chat_jsonl(3))
    for name in (".day2.jsonl", "day3.jsonl.part", "day4.jsonl.tmp", "day5.jsonl~", "notes.txt"):
        (folder / name).write_bytes(chat_jsonl(12))  # temporary names and non-training files: never read
    assert feed.scan_once() == []  # first sight: not yet known to be stable
    with open(growing, "ab") as handle:  # still being written
        handle.write(chat_jsonl(2))
    assert feed.scan_once() == []
    assert feed.scan_once() != []  # same size and mtime twice, and quiet for 5 s by the feed's clock
    [blob] = recorder.blobs
    assert (blob.container, blob.path) == ("training-data", "support/day.jsonl")
    assert feed.scan_once() == []  # handed over once

    # A file modified just now is not quiet yet, even if it looks stable across two scans.
    fresh = folder / "fresh.jsonl"
    fresh.write_bytes(chat_jsonl(12))
    now[0] = time.time()
    assert feed.scan_once() == [] and feed.scan_once() == []
    now[0] = time.time() + 100
    assert [b.path for b in feed.scan_once()] == ["support/fresh.jsonl"]
    # A rewrite is a new version (new etag): handed over again, once it is quiescent.
    growing.write_bytes(chat_jsonl(12))
    os.utime(growing, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert feed.scan_once() == []
    assert [b.path for b in feed.scan_once()] == ["support/day.jsonl"]
    assert recorder.blobs[-1].etag != blob.etag


def test_inbox_source_refuses_paths_outside_the_inbox(tmp_path):
    from tuneplane.inbox import InboxSource

    (tmp_path / "secret.jsonl").write_text("{}")
    (tmp_path / "inbox" / "c1").mkdir(parents=True)
    with pytest.raises(NotFound):
        list(InboxSource(tmp_path / "inbox").open_read("c1", "../../secret.jsonl"))
