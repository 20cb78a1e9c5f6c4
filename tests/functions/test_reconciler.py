"""The reconciler against the real SQLite store, content directory, registry and local runner.

The trainer here is the contract-keeping fake (tests/functions/backends/fake_trainer.py) so that the
state machine can be walked in seconds; tests/e2e/test_lifecycle_local.py runs the real trainer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tuneplane.backends.local_registry import LocalModelRegistry
from tuneplane.backends.local_runner import LocalRunner
from tuneplane.domain.ids import new_id
from tuneplane.domain.records import FileRecord, JobRecord
from tuneplane.ports import Conflict
from tuneplane.reconciler import ReconcileContext, reconcile_once, training_spec
from tuneplane.stores.localdir import LocalContentStore
from tuneplane.stores.sqlite import SqliteDatabase, SqliteFileStore, SqliteJobStore

FAKE = [sys.executable, str(Path(__file__).parent / "backends" / "fake_trainer.py")]


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_TRAINER_LEDGER", str(path))
    return path


class World:
    def __init__(self, home: Path, ledger: Path):
        self.home, self.ledger = home, ledger
        self.db = SqliteDatabase(home / "tuneplane.db")
        self.jobs, self.files = SqliteJobStore(self.db), SqliteFileStore(self.db)
        self.contents = LocalContentStore(home / "files")
        self.registry = LocalModelRegistry(home / "registry")
        self.runners: list[LocalRunner] = []

    def context(self, *, max_concurrent: int = 1, deployer=None, grace: float = 5.0) -> ReconcileContext:
        runner = LocalRunner(self.home, max_concurrent=max_concurrent, trainer_command=FAKE, grace_seconds=grace)
        self.runners.append(runner)
        return ReconcileContext(jobs=self.jobs, files=self.files, contents=self.contents,
                                backends={"local": runner}, registry=self.registry, deployer=deployer)

    def upload(self, text: str = '{"messages": []}\n' * 10) -> FileRecord:
        file_id = new_id("file")
        upload = self.contents.begin_upload(file_id)
        upload.write(text.encode())
        upload.commit()
        record = FileRecord(id=file_id, project="default", bytes=len(text), created_at=int(time.time()), filename="train.jsonl",
                            purpose="fine-tune", content_key=file_id, sha256=hashlib.sha256(text.encode()).hexdigest(),
                            format="chat", example_count=10)
        self.files.create_file(record)
        return record

    def create_job(self, behaviour: str = "steps=6,sleep=0.05,every=2", *, status: str = "queued", **extra) -> JobRecord:
        training = self.upload()
        job = JobRecord(id=new_id("ftjob"), project="default", created_at=int(time.time()), status=status,
                        model=f"fake:{behaviour}", training_file=training.id, seed=7, user_provided_suffix="demo",
                        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}}},
                        peft={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}, **extra)
        return self.jobs.create_job(job)[0]

    def get(self, job: JobRecord) -> JobRecord:
        return self.jobs.get_job(job.project, job.id)

    def set_desired(self, job: JobRecord, desired: str) -> None:
        for _ in range(50):
            current = self.get(job)
            try:
                self.jobs.update_job(current.model_copy(update={"desired_status": desired}))
                return
            except Conflict:
                continue
        raise AssertionError("could not update the job")

    def starts(self) -> list[dict]:
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == "start"]

    def cleanup(self) -> None:
        for entry in self.starts():
            try:
                os.killpg(entry["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        for runner in self.runners:
            run_until(lambda: not any(runner.alive(d.name) for d in runner.runs_dir.iterdir() if d.is_dir()),
                      lambda: None, timeout=30)
        self.db.close()


@pytest.fixture
def world(tmp_path, ledger):
    w = World(tmp_path / "home", ledger)
    yield w
    w.cleanup()


def run_until(predicate, step, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def all_events(world: World, job: JobRecord) -> list:
    return world.jobs.list_events(job.project, job.id, limit=1000)


def test_queued_job_runs_to_success_with_everything_recorded(world):
    ctx = world.context()
    job = world.create_job()
    seen: list[str] = []

    def step():
        reconcile_once(ctx)
        status = world.get(job).status
        if not seen or seen[-1] != status:
            seen.append(status)

    run_until(lambda: world.get(job).status == "succeeded", step)
    done = world.get(job)
    assert seen == ["queued", "running", "succeeded"] or seen == ["running", "succeeded"]
    name = f"ft:{job.model}:default:demo:{job.id}"
    assert done.fine_tuned_model == name
    assert done.trained_tokens == 60
    assert done.finished_at and done.estimated_finish is None and done.error is None
    assert done.backend_ref == f"local:{job.id}"
    # The results file.
    [result_id] = done.result_files
    result = world.files.get_file("default", result_id)
    assert result.purpose == "fine-tune-results"
    content = b"".join(world.contents.open_read(result.content_key))
    assert content.startswith(b"step,train_loss\n") and result.bytes == len(content)
    # Checkpoints, usable as models, and the model itself, in the registry with lineage.
    checkpoints = world.jobs.list_checkpoints("default", job.id, limit=10)
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[-1].fine_tuned_model_checkpoint == f"{name}:ckpt-step-2"
    entry = world.registry.get("default", name)
    assert entry["lineage"]["job_id"] == job.id and Path(entry["path"], "adapter_model.safetensors").exists()
    ckpt = world.registry.get("default", f"{name}:ckpt-step-4")
    assert ckpt["lineage"]["checkpoint_step"] == "4"
    # No deployer is wired: the deployment waits.
    assert done.deployment["status"] == "pending" and done.deployment["model"] == name
    # Events: the trainer's metrics and the reconciler's transitions, newest first, once each.
    events = all_events(world, job)
    messages = [e.message for e in reversed(events)]
    assert messages[0] == "Fine-tuning job started"
    assert messages[-2:] == [f"New fine-tuned model created: {name}", "The job has successfully completed"]
    assert len([e for e in events if e.type == "metrics"]) == 6
    # More passes, and a pass by a fresh context (a restarted server), change nothing.
    for _ in range(3):
        reconcile_once(ctx)
    reconcile_once(world.context())
    assert [e.id for e in all_events(world, job)] == [e.id for e in events]
    assert world.get(job).version == done.version
    assert len(world.starts()) == 1


def test_deployer_is_called_once_and_tracked_on_the_job(world):
    calls, during = [], []

    class RecordingDeployer:  # stands in for the serving helper's local deployer in this unit test
        def deploy(self, *, project, model, base_model, source_uri):
            calls.append((project, model, base_model, Path(source_uri).name))
            during.append(world.get(job).deployment)
            return {"status": "succeeded", "endpoint": "http://127.0.0.1:1/v1"}

        def status(self, project, model):
            return None

        def undeploy(self, project, model):
            return False

    ctx = world.context(deployer=RecordingDeployer())
    job = world.create_job("steps=2,sleep=0.02,every=2")
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
    reconcile_once(ctx)
    assert calls == [("default", f"ft:{job.model}:default:demo:{job.id}", job.model, "artifacts")]
    assert world.get(job).deployment["status"] == "succeeded"
    assert during == [{"status": "deploying", "model": calls[0][1]}], "progress shows while it deploys"


def test_deploy_false_skips_deployment(world):
    ctx = world.context()
    job = world.create_job("steps=2,sleep=0.02,every=2", deploy=False)
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
    assert world.get(job).deployment is None


def test_cancel_a_running_job(world):
    ctx = world.context()
    job = world.create_job("steps=1000,sleep=0.05,every=1000")
    run_until(lambda: world.get(job).status == "running", lambda: reconcile_once(ctx))
    world.set_desired(job, "cancel")
    run_until(lambda: world.get(job).status == "cancelled", lambda: reconcile_once(ctx))
    runner = ctx.backends["local"]
    assert not runner.alive(job.id)
    done = world.get(job)
    assert done.finished_at and done.fine_tuned_model is None
    assert "Fine-tuning job cancelled" in [e.message for e in all_events(world, job)]


def test_pause_and_resume_continue_from_the_checkpoint(world):
    ctx = world.context()
    job = world.create_job("steps=40,sleep=0.05,every=100")
    run_until(lambda: (world.get(job).trained_tokens or 0) >= 30, lambda: reconcile_once(ctx))
    running = world.get(job)
    assert running.status == "running"
    assert running.estimated_finish is not None and running.estimated_finish >= running.created_at
    assert world.jobs.list_events("default", job.id, limit=1)[0].type == "metrics", "progress shows while it runs"
    world.set_desired(job, "pause")
    run_until(lambda: world.get(job).status == "paused", lambda: reconcile_once(ctx))
    for _ in range(3):
        reconcile_once(ctx)
    assert world.get(job).status == "paused" and len(world.starts()) == 1
    checkpoints = world.jobs.list_checkpoints("default", job.id)
    assert checkpoints, "pausing saved a checkpoint"
    world.set_desired(job, "run")
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
    assert [s["from_step"] for s in world.starts()] == [0, checkpoints[0].step_number]
    messages = [e.message for e in reversed(all_events(world, job))]
    assert "Job paused" in messages and "Fine-tuning job resumed (attempt 2)" in messages


def test_concurrency_limit_and_fifo_through_the_store(world):
    ctx = world.context(max_concurrent=1)
    jobs = [world.create_job("steps=4,sleep=0.05,every=4") for _ in range(2)]

    def step():
        reconcile_once(ctx)
        statuses = [world.get(j).status for j in jobs]
        assert statuses.count("running") <= 1, statuses

    run_until(lambda: all(world.get(j).status == "succeeded" for j in jobs), step, timeout=90)
    assert [s["job"] for s in world.starts()] == [j.id for j in jobs]
    first_end = next(e for e in map(json.loads, world.ledger.read_text().splitlines()) if e["event"] == "end")
    assert first_end["t"] <= world.starts()[1]["t"]


def test_a_restarted_server_adopts_the_run_and_it_finishes_once(world):
    ctx = world.context()
    job = world.create_job("steps=30,sleep=0.05,every=5")
    run_until(lambda: world.get(job).status == "running", lambda: reconcile_once(ctx))
    restarted = world.context()  # new runner, new context, same home: the old server is gone
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(restarted))
    assert len(world.starts()) == 1
    assert len([e for e in all_events(world, job) if e.message == "The job has successfully completed"]) == 1


def test_two_reconcilers_at_once_start_one_trainer_and_write_each_event_once(world):
    contexts = [world.context(), world.context()]
    job = world.create_job("steps=6,sleep=0.05,every=3")
    errors: list[BaseException] = []

    def loop(ctx):
        try:
            run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(world.starts()) == 1
    messages = [e.message for e in all_events(world, job)]
    assert len(messages) == len(set(e.id for e in all_events(world, job)))
    assert messages.count("The job has successfully completed") == 1
    assert len(world.get(job).result_files) == 1


def test_a_failed_run_records_a_clear_error(world):
    ctx = world.context()
    job = world.create_job("steps=2,sleep=0.01,exit=2")
    run_until(lambda: world.get(job).status == "failed", lambda: reconcile_once(ctx))
    error = world.get(job).error
    assert error.code == "invalid_training_file" and error.param == "training_file"
    assert "line 3" in error.message
    assert any(e.level == "error" and "line 3" in e.message for e in all_events(world, job))


def test_validating_files_moves_to_queued_or_fails_naming_the_file(world):
    ctx = world.context()
    good = world.create_job(status="validating_files", deploy=False)
    bad = world.create_job(status="validating_files")
    world.contents.delete(world.files.get_file("default", bad.training_file).content_key)
    reconcile_once(ctx)
    assert world.get(good).status == "queued"
    failed = world.get(bad)
    assert failed.status == "failed"
    assert (failed.error.code, failed.error.param) == ("file_not_found", "training_file")
    assert bad.training_file in failed.error.message
    assert not (world.home / "runs" / bad.id).exists(), "nothing was started for the failed job"


def test_unknown_compute_fails_clearly(world):
    ctx = world.context()
    job = world.create_job(compute="gpu-cluster")
    reconcile_once(ctx)
    error = world.get(job).error
    assert world.get(job).status == "failed" and error.code == "compute_unavailable" and error.param == "compute"


def test_a_conflicting_write_is_retried_on_the_next_pass(world, monkeypatch):
    ctx = world.context()
    job = world.create_job("steps=2,sleep=0.02,every=2")
    run_until(lambda: world.get(job).status == "running", lambda: reconcile_once(ctx))
    real_update = world.jobs.update_job
    failures = {"left": 3}

    def flaky(record):
        if failures["left"]:
            failures["left"] -= 1
            raise Conflict(record.id)
        return real_update(record)

    monkeypatch.setattr(world.jobs, "update_job", flaky)
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
    events = all_events(world, job)
    assert [e.message for e in events].count("The job has successfully completed") == 1


def test_training_spec_is_valid_for_the_trainer():
    spec_module = pytest.importorskip("tuneplane_training.spec")
    job = JobRecord(id="ftjob-1", project="p", created_at=0, status="queued", model="tiny-random-llama",
                    training_file="file-1", seed=3,
                    method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 4, "batch_size": 2,
                                                                        "learning_rate_multiplier": 2.0, "beta": 0.2}}},
                    peft={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})
    spec = training_spec(job, training_file="/data/train.jsonl", validation_file=None, base_model="tiny-random-llama")
    parsed = spec_module.parse_spec(spec)
    assert parsed.method.type == "dpo" and parsed.method.dpo.beta == 0.2
    assert parsed.hyperparameters.n_epochs == 4 and parsed.hyperparameters.batch_size == 2
    assert parsed.hyperparameters.learning_rate == pytest.approx(1e-4)
    assert parsed.checkpoint.keep_last >= 4 and parsed.resume == "auto" and parsed.seed == 3


def _register_adapter(world: World, name: str, *, trained_on: str, use_dora: bool = False) -> dict:
    """A parent adapter model as the reconciler registers one (tags: its job's model and peft)."""
    folder = world.home / "parents" / name.replace(":", "_")
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": use_dora}))
    (folder / "adapter_model.safetensors").write_text("weights")
    return world.registry.register(project="default", name=name, source_uri=str(folder), base_model="tiny",
                                   tags={"job_id": "ftjob-parent", "base_model": trained_on,
                                         "peft": "dora" if use_dora else "lora"})


def _job_on(world: World, model: str, *, status: str = "queued", peft_type: str = "lora") -> JobRecord:
    job = world.create_job(status=status)
    return world.jobs.update_job(job.model_copy(update={"model": model, "peft": {**job.peft, "type": peft_type}}))


def test_an_adapter_model_is_continued_with_init_adapter_and_keeps_the_root_base_in_its_name(world):
    # Continued training (issue: ft: adapter as base): the child's spec loads the parent's base and the
    # parent adapter as init_adapter, instead of failing with unsupported_base_model.
    ctx = world.context()
    parent = "ft:tiny:default:first:ftjob-parent"
    entry = _register_adapter(world, parent, trained_on="fake:steps=2,sleep=0.01,every=2")
    job = _job_on(world, parent)
    run_until(lambda: world.get(job).status == "succeeded", lambda: reconcile_once(ctx))
    spec = json.loads((world.home / "runs" / job.id / "spec.json").read_text())
    assert spec["base_model"] == "fake:steps=2,sleep=0.01,every=2"  # what the parent's job trained on
    assert spec["init_adapter"] == entry["path"]
    done = world.get(job)
    child = f"ft:tiny:default:demo:{job.id}"  # the ROOT base, never ft:ft:…
    assert done.fine_tuned_model == child
    registered = world.registry.get("default", child)
    assert registered["base_model"] == "tiny" and registered["tags"]["base_model"] == parent
    # The child is an adapter too: continuing it again follows the lineage down to the same base.
    grandchild = _job_on(world, child)
    run_until(lambda: world.get(grandchild).status == "succeeded", lambda: reconcile_once(ctx))
    spec = json.loads((world.home / "runs" / grandchild.id / "spec.json").read_text())
    assert spec["base_model"] == "fake:steps=2,sleep=0.01,every=2"
    assert spec["init_adapter"] == registered["path"]
    assert world.get(grandchild).fine_tuned_model == f"ft:tiny:default:demo:{grandchild.id}"


@pytest.mark.parametrize("peft_type, use_dora, allowed", [("full", False, "lora or qlora"), ("dora", False, "lora or qlora"),
                                                            ("lora", True, "dora")])
def test_continuing_an_adapter_with_another_peft_type_fails_naming_peft_type(world, peft_type, use_dora, allowed):
    ctx = world.context()
    parent = "ft:tiny:default:first:ftjob-parent"
    _register_adapter(world, parent, trained_on="fake:steps=2", use_dora=use_dora)
    job = _job_on(world, parent, status="validating_files", peft_type=peft_type)
    reconcile_once(ctx)
    failed = world.get(job)
    assert failed.status == "failed"
    assert (failed.error.code, failed.error.param) == ("invalid_peft", "peft.type")
    assert f"needs peft.type {allowed}, not {peft_type}" in failed.error.message
    assert not (world.home / "runs" / job.id).exists(), "nothing was started"


def test_an_unregistered_ft_model_fails_as_model_not_found(world):
    ctx = world.context()
    job = _job_on(world, "ft:tiny:default:x:ftjob-gone", status="validating_files")
    reconcile_once(ctx)
    failed = world.get(job)
    assert (failed.status, failed.error.code, failed.error.param) == ("failed", "model_not_found", "model")


def test_training_spec_with_init_adapter_is_valid_for_the_trainer(tmp_path):
    spec_module = pytest.importorskip("tuneplane_training.spec")
    job = JobRecord(id="ftjob-2", project="p", created_at=0, status="queued", model="ft:tiny-random-llama:p::ftjob-1",
                    training_file="file-1", seed=3, method={"type": "supervised"},
                    peft={"type": "dora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})
    spec = training_spec(job, training_file="/data/train.jsonl", validation_file=None, base_model="tiny-random-llama",
                         init_adapter=str(tmp_path))
    parsed = spec_module.parse_spec(spec)
    assert parsed.init_adapter == str(tmp_path) and parsed.peft.type == "dora"
    assert parsed.hyperparameters.learning_rate == pytest.approx(2e-4)  # an adapter's base rate
    assert "init_adapter" not in training_spec(job, training_file="t", validation_file=None, base_model="b")
