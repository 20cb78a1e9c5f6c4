"""Azure ML command jobs: the exact entities passed to ``jobs.create_or_update`` (golden snapshots,
validated by azure-ai-ml's own schema), staging on a real Azurite, status mapping, cancel, and
idempotent resubmission. Only the MLClient operations are mocked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions.backends.azure_ml_fakes import (
    ROOT,
    job_record,
    mocked_ml_client,
    no_sleep_retry,
    not_found,
    set_runs,
    settings,
    training_spec,
)
from tuneplane.backends.azure_ml import STATUS_MAP, AzureTrainingBackend, event_id
from tuneplane.backends.azure_ml_jobs import COMMAND, CONTINUED_COMMAND
from tuneplane.ports import TrainingBackend
from tuneplane.stores.azure_account import StorageAccount
from tuneplane.stores.azure_blob import AzureBlobContentStore

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("TUNEPLANE_UPDATE_GOLDEN") == "1"


@pytest.fixture
def contents(azurite):  # noqa: F811
    container = azurite.unique_name("c")
    store = AzureBlobContentStore(StorageAccount(connection_string=azurite.connection_string), container)
    store.put_bytes("file-0005f1a2b3c4d5e6f7a8b9c1", b'{"messages": []}\n' * 3)
    store.put_bytes("file-0005f1a2b3c4d5e6f7a8b9c2", b'{"messages": []}\n')
    return store


@pytest.fixture
def ml():
    return mocked_ml_client()


@pytest.fixture
def backend(ml, contents, azurite):  # noqa: F811
    ml.jobs.get.side_effect = not_found()
    return AzureTrainingBackend(ml, contents, settings(azurite.connection_string, contents._container.container_name),
                                retry=no_sleep_retry())


def normalised(entity) -> dict:
    """The entity through azure-ai-ml's own schema, with machine-specific values masked."""
    entity._to_rest_object()  # the REST shape must build too
    text = json.dumps(entity._to_dict(), indent=2, sort_keys=True).replace(str(ROOT), "<repo>")
    data = json.loads(text)
    env = data.get("environment")
    if isinstance(env, dict) and "version" in env:
        env["version"] = "<hash of training/environment>"
    return data


def check_golden(name: str, data: dict) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        assert UPDATE, f"golden snapshot {path} is missing; run with TUNEPLANE_UPDATE_GOLDEN=1 and review it"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert data == json.loads(path.read_text())


def test_is_a_training_backend(backend):
    assert isinstance(backend, TrainingBackend)


def test_serverless_job_matches_golden_and_stages_its_inputs(backend, ml, contents):
    job = job_record()
    spec = training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1"), contents.uri("file-0005f1a2b3c4d5e6f7a8b9c2"))
    assert backend.submit(job, spec) == job.id
    ml.jobs.create_or_update.assert_called_once()
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.name == job.id and entity.command == COMMAND and entity.compute is None
    assert entity.resources.instance_type == "Standard_NC4as_T4_v3" and entity.queue_settings.job_tier == "standard"
    assert entity.tags == {"tuneplane.project": "proj-a", "tuneplane.job": job.id,
                           "tuneplane.base_model": "SmolLM2-135M-Instruct"}
    check_golden("serverless_job.json", normalised(entity))
    staged = json.loads(contents.read_bytes(f"tuneplane-runs/{job.id}/input/spec.json"))
    assert staged["training_file"] == "training.jsonl" and staged["validation_file"] == "validation.jsonl"
    assert staged["distribution"] == {"type": "none", "num_processes": 1, "num_nodes": 1}
    assert contents.read_bytes(f"tuneplane-runs/{job.id}/input/training.jsonl") == b'{"messages": []}\n' * 3
    # The staged spec is valid for the trainer's own contract.
    from tuneplane_training.spec import parse_spec

    assert parse_spec(staged).training_file == "training.jsonl"


def test_cluster_job_matches_golden_with_deepspeed_across_the_nodes_gpus(backend, ml, contents):
    from azure.ai.ml.entities import AmlCompute

    ml.compute.get.return_value = AmlCompute(name="gpu-a100", size="Standard_NC96ads_A100_v4", max_instances=4)
    job = job_record(compute="gpu-a100", model="meta-llama/Llama-3.1-8B-Instruct", peft={"type": "full"})
    # Two earlier attempts were paused (cancelled after a checkpoint): this is the third.
    set_runs(ml, {job.id: "Canceled", f"{job.id}-r1": "Canceled"})
    spec = training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1"))
    assert backend.submit(job, spec) == f"{job.id}-r2"
    ml.compute.get.assert_called_once_with("gpu-a100")
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.compute == "gpu-a100" and entity.distribution.process_count_per_instance == 4
    assert entity.queue_settings is None
    check_golden("cluster_job.json", normalised(entity))
    staged = json.loads(contents.read_bytes(f"tuneplane-runs/{job.id}/input/spec.json"))
    assert staged["distribution"] == {"type": "deepspeed", "zero_stage": 3, "num_processes": 4, "num_nodes": 1}
    assert staged["validation_file"] is None


def test_continued_training_mounts_the_parent_adapter_as_a_second_input(backend, ml, contents, tmp_path):
    # A job on an ft: adapter model: the reconciler's spec carries the parent's output as init_adapter.
    parent_output = "azureml://jobs/ftjob-0005f1a2b3c4d5e6f7a8b9a0/outputs/model"
    job = job_record(model="ft:SmolLM2-135M-Instruct:proj-a::ftjob-0005f1a2b3c4d5e6f7a8b9a0")
    spec = {**training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1")), "init_adapter": parent_output}
    assert backend.submit(job, spec) == job.id
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.command == CONTINUED_COMMAND == COMMAND + " --init-adapter ${{inputs.init_adapter}}"
    adapter = entity.inputs["init_adapter"]
    assert (adapter.path, adapter.type, adapter.mode) == (parent_output, "uri_folder", "ro_mount")
    check_golden("continued_job.json", normalised(entity))
    staged = json.loads(contents.read_bytes(f"tuneplane-runs/{job.id}/input/spec.json"))
    assert staged["init_adapter"] == parent_output and staged["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # On the node, --init-adapter (the mount) replaces the URI; the staged spec then loads as usual.
    from tuneplane_training.spec import load_spec

    (tmp_path / "spec.json").write_text(json.dumps({**staged, "training_file": "t.jsonl", "validation_file": None}))
    (tmp_path / "t.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "mnt").mkdir()
    assert load_spec(tmp_path / "spec.json", init_adapter=str(tmp_path / "mnt")).init_adapter == str(tmp_path / "mnt")


def test_a_job_without_init_adapter_has_no_adapter_input(backend, ml, contents):
    job = job_record()
    backend.submit(job, training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1")))
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert set(entity.inputs) == {"spec"} and entity.command == COMMAND


def test_a_large_full_fine_tune_spans_nodes_on_serverless(backend, ml, contents):
    job = job_record(model="meta-llama/Llama-3.1-70B", peft={"type": "full"})
    backend.submit(job, training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1")))
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.resources.instance_count > 1 and entity.distribution.process_count_per_instance == 8
    normalised(entity)


@pytest.mark.parametrize("status", ["Queued", "Running", "Completed"])
def test_resubmission_adopts_the_existing_run(backend, ml, contents, status):
    job = job_record()
    set_runs(ml, {job.id: status})
    assert backend.submit(job, training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1"))) == job.id
    assert ml.jobs.get.call_args_list[0].args == (job.id,)
    ml.jobs.create_or_update.assert_not_called()
    assert backend.observe(job).attempt == 1


def test_resuming_after_pause_starts_the_next_attempt_on_the_same_output(backend, ml, contents):
    job = job_record()
    set_runs(ml, {job.id: "Canceled"})
    assert backend.submit(job, training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1"))) == f"{job.id}-r1"
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.outputs["model"].path.endswith(f"tuneplane-runs/{job.id}/model/")
    staged = json.loads(contents.read_bytes(f"tuneplane-runs/{job.id}/input/spec.json"))
    assert staged["resume"] == "auto"


def test_a_concurrent_creation_is_adopted(backend, ml, contents):
    from azure.core.exceptions import ResourceExistsError

    error = ResourceExistsError(message="Job already exists")
    error.status_code = 409
    ml.jobs.create_or_update.side_effect = error
    job = job_record()
    assert backend.submit(job, training_spec(job, contents.uri("file-0005f1a2b3c4d5e6f7a8b9c1"))) == job.id


@pytest.mark.parametrize("azure_status, ours", sorted(STATUS_MAP.items()))
def test_status_mapping(backend, ml, azure_status, ours):
    job = job_record()
    set_runs(ml, {job.id: "Canceled", f"{job.id}-r1": azure_status})  # the newest attempt counts
    state = backend.observe(job)
    assert state.status == ours and state.attempt == 2


def test_a_paused_job_reads_cancelled_as_paused(backend, ml):
    set_runs(ml, {job_record().id: "Canceled"})
    assert backend.observe(job_record(desired_status="pause")).status == "paused"
    assert backend.observe(job_record(desired_status="cancel")).status == "cancelled"


def _write_outputs(contents, job_id: str) -> None:
    out = f"tuneplane-runs/{job_id}/model/"
    lines = [
        {"seq": 1, "created_at": 1_760_000_100, "level": "info", "message": "Training started", "type": "message", "data": None},
        {"seq": 2, "created_at": 1_760_000_160, "level": "info", "message": "Step 10/20: train_loss=1.2",
         "type": "metrics", "data": {"step": 10, "train_loss": 1.2, "trained_tokens": 5000}},
        {"seq": 3, "created_at": 1_760_000_161, "level": "error", "message": "Invalid input: line 3: not JSON",
         "type": "message", "data": {"exit_code": 2}},
    ]
    contents.put_bytes(out + "events.jsonl", ("\n".join(json.dumps(x) for x in lines) + "\n{\"seq\": 4, \"torn").encode())
    contents.put_bytes(out + "checkpoints/checkpoint-10/checkpoint.json",
                       json.dumps({"step": 10, "metrics": {"train_loss": 1.2, "valid_loss": None}, "complete": True}).encode())
    contents.put_bytes(out + "checkpoints/checkpoint-20/adapter_model.safetensors", b"partial")  # no marker yet
    contents.put_bytes(out + "manifest.json", json.dumps({"trained_tokens": 10000}).encode())


def test_events_and_checkpoints_come_back_with_stable_ids(backend, contents):
    job = job_record(backend_ref="ftjob-0005f1a2b3c4d5e6f7a8b9c0")
    _write_outputs(contents, job.id)
    events = backend.read_events(job)
    assert [e.message for e in events] == ["Training started", "Step 10/20: train_loss=1.2", "Invalid input: line 3: not JSON"]
    assert events[1].type == "metrics" and events[1].data["trained_tokens"] == 5000 and events[2].level == "error"
    assert [e.id for e in backend.read_events(job)] == [e.id for e in events]  # stable across calls
    assert backend.read_events(job, after=events[1].id) == events[2:]
    assert events[0].id == event_id(job.id, 1, 1_760_000_100) and sorted(e.id for e in events) == [e.id for e in events]
    checkpoints = backend.read_checkpoints(job)
    assert [c.step_number for c in checkpoints] == [10]
    assert checkpoints[0].metrics == {"train_loss": 1.2, "valid_loss": None}
    assert checkpoints[0].location == (
        f"azureml://datastores/tuneplanefiles/paths/tuneplane-runs/{job.id}/model/checkpoints/checkpoint-10/")
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(f":{job.id}:ckpt-step-10")
    assert backend.read_results(job) is None
    contents.put_bytes(f"tuneplane-runs/{job.id}/model/results.csv", b"step,train_loss\n10,1.2\n")
    assert backend.read_results(job) == b"step,train_loss\n10,1.2\n"


def test_failed_and_succeeded_runs_report_error_and_output(backend, ml, contents):
    job = job_record(backend_ref="ftjob-0005f1a2b3c4d5e6f7a8b9c0")
    set_runs(ml, {job.id: "Failed"})
    bare = backend.observe(job)
    assert bare.error["code"] == "run_setup_failed" and job.id in bare.error["message"]
    _write_outputs(contents, job.id)
    failed = backend.observe(job)
    assert failed.error == {"code": "invalid_training_input", "message": "Invalid input: line 3: not JSON"}
    set_runs(ml, {job.id: "Completed"})
    done = backend.observe(job)
    assert done.output_uri == f"azureml://jobs/{job.id}/outputs/model" and done.trained_tokens == 10000


def test_cancel_and_pause_use_begin_cancel_on_the_newest_attempt(backend, ml):
    job = job_record(backend_ref="serverless:ftjob-0005f1a2b3c4d5e6f7a8b9c0")
    set_runs(ml, {job.id: "Canceled", f"{job.id}-r1": "Running"})
    backend.cancel(job)
    backend.pause(job)
    assert [c.args for c in ml.jobs.begin_cancel.call_args_list] == [(f"{job.id}-r1",), (f"{job.id}-r1",)]
    set_runs(ml, {})
    backend.cancel(job)  # never created: nothing to stop, no error
    assert ml.jobs.begin_cancel.call_count == 2


def test_a_missing_run_is_unknown(backend):
    state = backend.observe(job_record(backend_ref="ftjob-0005f1a2b3c4d5e6f7a8b9c0"))
    assert state.status == "unknown" and state.error["code"] == "run_not_found"
