"""The whole Azure control plane under the real reconciler: Table and Blob stores on Azurite,
Azure ML faked at the MLClient boundary only. A job goes queued → running → succeeded, with the
trainer's events, registration and deployment; a quota refusal keeps another job queued."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions.backends.azure_ml_fakes import http_error, job_record, mocked_ml_client, not_found, set_runs, settings
from tuneplane.domain.records import FileRecord
from tuneplane.reconciler import reconcile_once
from tuneplane.stores.azure import build_azure_adapters, build_azure_context

pytestmark = pytest.mark.azurite

DATA = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10


@pytest.fixture
def plane(azurite):  # noqa: F811
    azure = settings(azurite.connection_string, azurite.unique_name("c"), table_prefix=azurite.unique_name("t"),
                     retry_budget_s=0.5)
    adapters = build_azure_adapters(None, azure)
    ml = mocked_ml_client()
    set_runs(ml, {})
    ml.models.get.side_effect = not_found()
    ml.models.create_or_update.side_effect = lambda model: model
    ml.online_deployments.get.side_effect = not_found()
    context = build_azure_context(None, adapters, azure=azure, ml_client=ml)
    return adapters, context, ml


def _queued_job(adapters, **extra):
    file_id = "file-0005f1a2b3c4d5e6f7a8b9c1"
    if adapters.files.get_file("proj-a", file_id) is None:
        upload = adapters.contents.begin_upload(file_id)
        upload.write(DATA)
        upload.commit()
        adapters.files.create_file(FileRecord(
            id=file_id, project="proj-a", bytes=len(DATA), created_at=1_760_000_000, filename="train.jsonl",
            purpose="fine-tune", content_key=file_id, sha256=hashlib.sha256(DATA).hexdigest(), format="chat",
            example_count=10))
    job, _ = adapters.jobs.create_job(job_record(training_file=file_id, **extra))
    return job


def test_a_job_runs_to_a_deployed_model(plane):
    adapters, context, ml = plane
    job = _queued_job(adapters)
    reconcile_once(context)
    ml.jobs.create_or_update.assert_called_once()
    assert ml.jobs.create_or_update.call_args.args[0].name == job.id
    staged = json.loads(adapters.contents.read_bytes(f"tuneplane-runs/{job.id}/input/spec.json"))
    assert staged["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapters.contents.read_bytes(f"tuneplane-runs/{job.id}/input/training.jsonl") == DATA

    out = f"tuneplane-runs/{job.id}/model/"
    adapters.contents.put_bytes(out + "events.jsonl", json.dumps(
        {"seq": 1, "created_at": 1_760_000_100, "level": "info", "message": "Step 1/2: train_loss=2.0000",
         "type": "metrics", "data": {"step": 1, "train_loss": 2.0, "trained_tokens": 300}}).encode() + b"\n")
    set_runs(ml, {job.id: "Running"})
    reconcile_once(context)
    running = adapters.jobs.get_job("proj-a", job.id)
    assert running.status == "running" and running.trained_tokens == 300
    assert "Step 1/2: train_loss=2.0000" in [e.message for e in adapters.jobs.list_events("proj-a", job.id)]

    adapters.contents.put_bytes(out + "adapter_config.json", b'{"r": 16}')
    adapters.contents.put_bytes(out + "adapter_model.safetensors", b"weights")
    adapters.contents.put_bytes(out + "manifest.json", b'{"trained_tokens": 600}')
    set_runs(ml, {job.id: "Completed"})
    reconcile_once(context)
    done = adapters.jobs.get_job("proj-a", job.id)
    assert done.status == "succeeded" and done.trained_tokens == 600
    assert done.fine_tuned_model == f"ft:SmolLM2-135M-Instruct:proj-a::{job.id}"
    model = ml.models.create_or_update.call_args.args[0]
    assert model.path == f"azureml://jobs/{job.id}/outputs/model" and model.tags["tuneplane.project"] == "proj-a"
    deployment = ml.online_deployments.begin_create_or_update.call_args.args[0]
    assert deployment.environment_variables["TUNEPLANE_MODEL_NAME"] == done.fine_tuned_model
    assert done.deployment["status"] == "deploying"
    assert adapters.jobs.list_unfinished_jobs() == []


def test_a_quota_refusal_keeps_the_job_queued_with_an_event(plane):
    adapters, context, ml = plane
    job = _queued_job(adapters)
    ml.jobs.create_or_update.side_effect = http_error(400, "QuotaExceeded: no quota for Standard_NC4as_T4_v3")
    for _ in range(3):
        reconcile_once(context)
    current = adapters.jobs.get_job("proj-a", job.id)
    assert current.status == "queued" and current.error is None
    warnings = [e for e in adapters.jobs.list_events("proj-a", job.id) if e.level == "warn"]
    assert len(warnings) == 1 and "QuotaExceeded" in warnings[0].message
    ml.jobs.create_or_update.side_effect = None
    reconcile_once(context)
    assert ml.jobs.create_or_update.call_count == 4


def test_an_unknown_compute_fails_the_job_with_its_code(plane):
    adapters, context, ml = plane
    ml.compute.get.side_effect = not_found("Compute no-such-cluster not found")
    job = _queued_job(adapters, compute="no-such-cluster")
    reconcile_once(context)  # submits (refused: a note on the datastore)
    reconcile_once(context)  # observes the refusal and fails the job
    failed = adapters.jobs.get_job("proj-a", job.id)
    assert failed.status == "failed" and failed.error.code == "compute_not_found"
    assert "no-such-cluster" in failed.error.message
    ml.jobs.create_or_update.assert_not_called()


def test_azure_unreachable_loses_nothing(plane):
    adapters, context, ml = plane
    job = _queued_job(adapters)
    ml.jobs.get.side_effect = http_error(503, "Service Unavailable")
    report = reconcile_once(context)
    assert job.id in report.errors
    assert adapters.jobs.get_job("proj-a", job.id).status == "queued"
    assert [j.id for j in adapters.jobs.list_unfinished_jobs()] == [job.id]
    set_runs(ml, {})
    reconcile_once(context)
    ml.jobs.create_or_update.assert_called_once()


def test_a_succeeded_job_gets_its_results_file_from_the_datastore(plane):
    adapters, context, ml = plane
    job = _queued_job(adapters, deploy=False)
    reconcile_once(context)
    results = b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.0,0.5,,\n2,1.5,0.6,1.7,0.55\n"
    out = f"tuneplane-runs/{job.id}/model/"
    adapters.contents.put_bytes(out + "results.csv", results)  # written by the run, on the datastore only
    adapters.contents.put_bytes(out + "manifest.json", b'{"trained_tokens": 600}')
    set_runs(ml, {job.id: "Completed"})
    reconcile_once(context)
    done = adapters.jobs.get_job("proj-a", job.id)
    assert done.status == "succeeded" and len(done.result_files) == 1
    record = adapters.files.get_file("proj-a", done.result_files[0])
    assert record.purpose == "fine-tune-results" and record.bytes == len(results)
    assert b"".join(adapters.contents.open_read(record.content_key)) == results
    reconcile_once(context)  # a later pass (or a replay) adds nothing
    assert adapters.jobs.get_job("proj-a", job.id).result_files == done.result_files


def test_compute_gpu_and_cpu_name_the_clusters_infra_created(azurite):  # noqa: F811
    from azure.ai.ml.entities import AmlCompute

    azure = settings(azurite.connection_string, azurite.unique_name("c"), table_prefix=azurite.unique_name("t"),
                     retry_budget_s=0.5, gpu_cluster="gpu-cluster", cpu_cluster="cpu-cluster")
    adapters = build_azure_adapters(None, azure)
    ml = mocked_ml_client()
    set_runs(ml, {})
    sizes = {"gpu-cluster": "Standard_NC4as_T4_v3", "cpu-cluster": "Standard_DS3_v2"}
    ml.compute.get.side_effect = lambda name: AmlCompute(name=name, size=sizes[name], max_instances=1)
    context = build_azure_context(None, adapters, azure=azure, ml_client=ml)
    job = _queued_job(adapters, compute="gpu")
    reconcile_once(context)
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.compute == "gpu-cluster"
    ml.compute.get.assert_called_with("gpu-cluster")
    set_runs(ml, {job.id: "Queued"})  # the first job's run exists now: it is not submitted again
    other = _queued_job(adapters, id="ftjob-0005f1a2b3c4d5e6f7a8b9d0", compute="cpu")
    reconcile_once(context)
    created = {call.args[0].name: call.args[0].compute for call in ml.jobs.create_or_update.call_args_list}
    assert created == {job.id: "gpu-cluster", other.id: "cpu-cluster"}
    assert ml.jobs.create_or_update.call_count == 2
