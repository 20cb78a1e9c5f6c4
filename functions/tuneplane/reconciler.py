"""The reconciler: the one loop that moves fine-tuning jobs forward.

``reconcile_once`` looks at every unfinished job, oldest first (that order is the FIFO queue),
compares what the user wants (``desired_status``) with what the training backend observes, and makes
the next move: submit, pause, cancel, record progress, finish. It keeps no state between passes that
matters: everything it decides comes from the stores and the backend, and every write is idempotent
(events and checkpoints have ids derived from what they describe; the results file, the registry
and the deployer are idempotent by name) or a compare-and-swap on the job (``Conflict`` means someone
else moved first: the job is left for the next pass). So a crash, a restart or two passes at once
do no harm, as with a Kubernetes controller. The server runs it on an interval and after each user
action; in Azure a timer trigger calls the same function.

Order of writes on a transition: side effects first (events, checkpoints, results file, registry,
deployment), then the job update that records the transition. A crash between them repeats the
side effects, which are idempotent, on the next pass.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneplane.backends.run_output import stable_id
from tuneplane.domain.ids import fine_tuned_model_name, parse_fine_tuned_model
from tuneplane.domain.jobs import can_transition
from tuneplane.domain.records import TERMINAL_STATUSES, EventRecord, FileRecord, JobRecord
from tuneplane.model_source import ModelSourceError, resolve_model_source
from tuneplane.ports import (
    AlreadyExists,
    Conflict,
    ContentStore,
    Deployer,
    FileStore,
    JobStore,
    ModelRegistry,
    NotFound,
    TrainingBackend,
)

log = logging.getLogger("tuneplane.reconciler")

# Base learning rates that ``learning_rate_multiplier`` scales: adapters tolerate far larger steps
# than full fine-tuning, and DPO wants smaller ones than supervised training.
BASE_LEARNING_RATE = {
    ("supervised", "adapter"): 2e-4,
    ("supervised", "full"): 2e-5,
    ("dpo", "adapter"): 5e-5,
    ("dpo", "full"): 5e-6,
}
RESULTS_FILENAME = "step_metrics.csv"
COMPLETED = "The job has successfully completed"  # OpenAI's closing event message


@dataclass
class ReconcileContext:
    """What one pass needs. Build it once and keep it: ``seen_events`` only saves work."""

    jobs: JobStore
    files: FileStore
    contents: ContentStore
    # By job.compute ("local", "serverless", a cluster name); "*" serves every other compute name.
    backends: Mapping[str, TrainingBackend]
    registry: ModelRegistry | None = None
    deployer: Deployer | None = None
    checkpoint_every_n_steps: int | None = None
    clock: Callable[[], float] = time.time
    seen_events: dict[str, str] = field(default_factory=dict)  # job id -> newest event id appended
    # Retraining's promotion gate (tuneplane.retraining.PromotionGate): decide(job, model) -> (deploy?, why)
    # or None for an ordinary job; promoted(job, model, deployment) after a deployment.
    promotion: Any = None
    announced: set[tuple[str, int]] = field(default_factory=set)  # (job id, attempt) start events written


@dataclass
class PassReport:
    examined: int = 0
    changed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def reconcile_once(ctx: ReconcileContext) -> PassReport:
    """One pass over every unfinished job. Safe to call at any time, any number of times."""
    report = PassReport()
    for job in ctx.jobs.list_unfinished_jobs():
        report.examined += 1
        try:
            if reconcile_job(ctx, job):
                report.changed.append(job.id)
        except Conflict:
            report.conflicts.append(job.id)  # a user action or another pass got there first
        except Exception as exc:  # one bad job must not stall the queue behind it
            log.exception("reconciling %s failed", job.id)
            report.errors[job.id] = f"{type(exc).__name__}: {exc}"
    return report


def reconcile_job(ctx: ReconcileContext, job: JobRecord) -> bool:
    """Make the next move for one job; True if the job record changed."""
    try:
        return _reconcile(ctx, job)
    except _FailNow as failure:
        current = ctx.jobs.get_job(job.project, job.id)
        if current is None or current.status in TERMINAL_STATUSES:
            return False
        return _finish(ctx, current, "failed", error=failure.error)


def _reconcile(ctx: ReconcileContext, job: JobRecord) -> bool:
    if job.status in TERMINAL_STATUSES:
        return False
    backend = ctx.backends.get(job.compute) or ctx.backends.get("*")
    if backend is None:
        return _finish(ctx, job, "failed", error={
            "code": "compute_unavailable",
            "message": f"No training backend serves compute '{job.compute}' here; available: {', '.join(sorted(ctx.backends)) or 'none'}.",
            "param": "compute",
        })
    if job.backend_ref is None:
        return _before_submission(ctx, job, backend)

    state = backend.observe(job)
    _sync_progress(ctx, job, backend)
    if state.status == "unknown":
        # Submission was recorded but the backend lost (or never got) the run: submit again.
        # With resume "auto" a run that had checkpoints continues from the last one.
        if job.desired_status == "cancel":
            return _finish(ctx, job, "cancelled")
        if job.desired_status == "pause":
            return _update(ctx, job, status="paused") if job.status != "paused" else False
        backend.submit(job, _spec_or_fail(ctx, job))
        state = backend.observe(job)

    if state.status == "succeeded":
        return _succeed(ctx, job, backend, state)
    if state.status == "failed":
        return _finish(ctx, job, "failed", error=state.error or {"code": "training_error", "message": "Training failed."}, when=state.finished_at)
    if state.status == "cancelled":
        return _finish(ctx, job, "cancelled", when=state.finished_at)

    if job.desired_status == "cancel":
        if state.status == "running":
            backend.cancel(job)  # the trainer checkpoints and exits; a later pass records it
            return _update_progress(ctx, job, state)
        return _finish(ctx, job, "cancelled", when=state.finished_at)
    if job.desired_status == "pause":
        if state.status == "running":
            if getattr(state, "stopping", None) != "pause":
                backend.pause(job)
            return _update_progress(ctx, job, state)
        if job.status != "paused":
            _event(ctx, job, "Job paused", stamp=_stamp(state.finished_at or ctx.clock()), key=f"paused\n{getattr(state, 'attempt', 0)}")
            return _update(ctx, job, status="paused", estimated_finish=None)
        return False

    # desired run
    if state.status in ("queued", "paused"):
        backend.submit(job, _spec_or_fail(ctx, job))
        state = backend.observe(job)
    if state.status == "running":
        attempt = getattr(state, "attempt", 0)
        started = getattr(state, "started_at", None) or ctx.clock()
        # Every attempt is announced once, also one that restarted after a server stop while the
        # job stayed "running"; the id is derived from the attempt, so a repeat is a no-op.
        if (job.id, attempt) not in ctx.announced:
            message = "Fine-tuning job started" if attempt <= 1 else f"Fine-tuning job resumed (attempt {attempt})"
            _event(ctx, job, message, stamp=_stamp(started), key=f"started\n{attempt}")
            ctx.announced.add((job.id, attempt))
        return _update_progress(ctx, job, state, status="running")
    if state.status == "queued" and job.status == "paused":
        return _update(ctx, job, status="queued")
    if state.status in ("succeeded", "failed", "cancelled"):
        return _reconcile(ctx, job)
    return _update_progress(ctx, job, state)


# -- before the run exists ------------------------------------------------------------------------


def _before_submission(ctx: ReconcileContext, job: JobRecord, backend: TrainingBackend) -> bool:
    if job.desired_status == "cancel":
        return _finish(ctx, job, "cancelled")
    if job.desired_status == "pause":
        return _update(ctx, job, status="paused") if job.status != "paused" else False
    if job.status == "validating_files":
        _spec_or_fail(ctx, job)
        return _update(ctx, job, status="queued")
    spec = _spec_or_fail(ctx, job)
    # Record the reference *before* anything starts: from then on the API only sets desired_status,
    # so a cancel can never slip past a run that is starting.
    job = ctx.jobs.update_job(JobRecord.model_validate({**job.model_dump(), "backend_ref": f"{job.compute}:{job.id}", "status": "queued"}))
    backend.submit(job, spec)
    state = backend.observe(job)
    if state.status == "running":
        _event(ctx, job, "Fine-tuning job started", stamp=_stamp(getattr(state, "started_at", None) or ctx.clock()), key="started\n1")
        _update(ctx, job, status="running")
    return True


def training_spec(job: JobRecord, *, training_file: str, validation_file: str | None, base_model: str,
                  checkpoint_every_n_steps: int | None = None, init_adapter: str | None = None) -> dict[str, Any]:
    """The trainer spec (training/SPEC.md, version 1) for a job; the same for every backend.
    ``init_adapter`` (continued training) is where the parent adapter lies: a local folder, or a
    URI the backend stages (Azure ML mounts it as the job's ``init_adapter`` input)."""
    method_type = job.method.get("type", "supervised")
    hyper = dict((job.method.get(method_type) or {}).get("hyperparameters") or {})
    peft = dict(job.peft or {})
    kind = "full" if peft.get("type") == "full" else "adapter"
    n_epochs = int(hyper.get("n_epochs", 1))
    spec: dict[str, Any] = {
        "spec_version": 1,
        "job_id": job.id,
        "base_model": base_model,
        "training_file": training_file,
        "validation_file": validation_file,
        "method": {"type": method_type},
        "peft": peft,
        "hyperparameters": {
            "n_epochs": n_epochs,
            "batch_size": int(hyper.get("batch_size", 1)),
            "learning_rate": BASE_LEARNING_RATE[(method_type, kind)] * float(hyper.get("learning_rate_multiplier", 1.0)),
        },
        "seed": job.seed,
        # Every epoch checkpoint is kept: each is a usable model (ft:…:ckpt-step-N).
        "checkpoint": {"every_n_steps": checkpoint_every_n_steps, "keep_last": max(3, n_epochs)},
        "resume": "auto",
    }
    if method_type == "dpo":
        spec["method"]["dpo"] = {"beta": float(hyper.get("beta", 0.1))}
    if init_adapter is not None:
        spec["init_adapter"] = init_adapter
    return spec


def _spec_or_fail(ctx: ReconcileContext, job: JobRecord) -> dict[str, Any]:
    paths = {}
    for param in ("training_file", "validation_file"):
        file_id = getattr(job, param)
        if file_id is None:
            paths[param] = None
            continue
        record = ctx.files.get_file(job.project, file_id)
        if record is None or not ctx.contents.exists(record.content_key):
            raise _FailNow(job, "file_not_found", f"The {param.replace('_', ' ')} '{file_id}' no longer exists.", param)
        paths[param] = ctx.contents.uri(record.content_key)
    try:
        source = resolve_model_source(ctx.registry, job.project, job.model, str(job.peft.get("type", "lora")))
    except ModelSourceError as err:
        raise _FailNow(job, err.code, err.message, err.param) from err
    return training_spec(job, **paths, base_model=source.base_model, init_adapter=source.init_adapter,
                         checkpoint_every_n_steps=ctx.checkpoint_every_n_steps)


class _FailNow(Exception):
    """Raised inside a step when the job cannot go on; handled by failing the job."""

    def __init__(self, job: JobRecord, code: str, message: str, param: str | None):
        super().__init__(message)
        self.job, self.error = job, {"code": code, "message": message, "param": param}


# -- progress and finishing -----------------------------------------------------------------------


def _sync_progress(ctx: ReconcileContext, job: JobRecord, backend: TrainingBackend) -> None:
    """Copy the run's new events and checkpoints into the store (both idempotent by id)."""
    for event in backend.read_events(job, after=ctx.seen_events.get(job.id)):
        ctx.jobs.append_event(job.project, event)
        ctx.seen_events[job.id] = max(event.id, ctx.seen_events.get(job.id, ""))
    for checkpoint in backend.read_checkpoints(job):
        ctx.jobs.put_checkpoint(job.project, checkpoint)


def _update_progress(ctx: ReconcileContext, job: JobRecord, state: Any, status: str | None = None) -> bool:
    changes: dict[str, Any] = {}
    if status and status != job.status:
        changes["status"] = status
    if state.trained_tokens is not None and state.trained_tokens != job.trained_tokens:
        changes["trained_tokens"] = state.trained_tokens
    if state.estimated_finish is not None and state.estimated_finish != job.estimated_finish:
        changes["estimated_finish"] = state.estimated_finish
    return _update(ctx, job, **changes) if changes else False


def _succeed(ctx: ReconcileContext, job: JobRecord, backend: TrainingBackend, state: Any) -> bool:
    finished = int(state.finished_at or ctx.clock())
    output = state.output_uri
    name = fine_tuned_model_name(job.model, job.project, job.user_provided_suffix, job.id)
    result_files = list(job.result_files)
    results = _results_of(backend, job, output)
    if results is not None:
        file_id = _store_results_file(ctx, job, results, finished)
        if file_id not in result_files:
            result_files.append(file_id)
    root_base = (parse_fine_tuned_model(job.model) or {}).get("base", job.model)
    source_uri = output
    if ctx.registry is not None and output:
        tags = {"job_id": job.id, "base_model": job.model, "training_file": job.training_file,
                "method": job.method.get("type", "supervised"), "peft": str(job.peft.get("type", "lora"))}
        entry = ctx.registry.register(project=job.project, name=name, source_uri=output, base_model=root_base, tags=tags)
        source_uri = entry.get("path", output)
        for checkpoint in backend.read_checkpoints(job):
            if checkpoint.location and Path(checkpoint.location).is_dir():
                ctx.registry.register(
                    project=job.project, name=checkpoint.fine_tuned_model_checkpoint, source_uri=checkpoint.location,
                    base_model=root_base, tags={**tags, "checkpoint_step": str(checkpoint.step_number)},
                )
    deployment = job.deployment
    if job.deploy and (deployment is None or deployment.get("status") in (None, "pending", "deploying")):
        verdict = ctx.promotion.decide(job, name) if ctx.promotion is not None else None
        if verdict is not None and not verdict[0]:
            deployment = {"status": "not_promoted", "model": name, "reason": verdict[1]}
            _event(ctx, job, f"Not deployed: {verdict[1]}", stamp=_stamp(finished, 1), key="not-promoted", level="warn")
        else:
            if ctx.deployer is not None and (deployment or {}).get("status") != "deploying":
                # Show the deployment in progress: a local deploy waits for the model to answer.
                job = _with(ctx, job, deployment={"status": "deploying", "model": name})
            deployment = _deploy(ctx, job, name, root_base, source_uri)
            if ctx.promotion is not None and verdict is not None:
                ctx.promotion.promoted(job, name, deployment)
    _event(ctx, job, f"New fine-tuned model created: {name}", stamp=_stamp(finished, 1), key="model-created")
    # The trainer may have said so itself (its events are copied verbatim); say it once.
    if not any(e.message == COMPLETED for e in backend.read_events(job)):
        _event(ctx, job, COMPLETED, stamp=_stamp(finished, 2), key="succeeded")
    return _update(ctx, job, status="succeeded", fine_tuned_model=name, finished_at=finished, result_files=result_files,
                   trained_tokens=state.trained_tokens if state.trained_tokens is not None else job.trained_tokens,
                   estimated_finish=None, deployment=deployment, error=None)


def _deploy(ctx: ReconcileContext, job: JobRecord, name: str, base: str, source_uri: str | None) -> dict[str, Any]:
    if ctx.deployer is None:
        return {"status": "pending", "model": name, "message": "No deployer is configured; deploy the model by hand."}
    try:
        result = ctx.deployer.deploy(project=job.project, model=name, base_model=base, source_uri=source_uri or "")
    except Exception as exc:  # a failed deployment never fails the finished training
        log.exception("deploying %s failed", name)
        return {"status": "failed", "model": name, "error": {"code": "deployment_failed", "message": str(exc)}}
    return {"model": name, **(result or {}), "status": (result or {}).get("status", "succeeded")}


def _results_of(backend: TrainingBackend, job: JobRecord, output: str | None) -> bytes | None:
    """The run's results.csv through the backend (an Azure run's lies on the datastore, not on this
    machine); a backend without ``read_results`` keeps its output folder local."""
    reader = getattr(backend, "read_results", None)
    if reader is not None:
        return reader(job)
    path = Path(output) / "results.csv" if output else None
    return path.read_bytes() if path is not None and path.is_file() else None


def _store_results_file(ctx: ReconcileContext, job: JobRecord, data: bytes, finished: int) -> str:
    file_id = stable_id("file", finished * 1_000_000, f"{job.id}\nresults")
    if ctx.files.get_file(job.project, file_id) is not None:
        return file_id
    if not ctx.contents.exists(file_id):
        upload = ctx.contents.begin_upload(file_id)
        try:
            upload.write(data)
            upload.commit()
        except BaseException:
            upload.abort()
            raise
    record = FileRecord(id=file_id, project=job.project, bytes=len(data), created_at=finished, filename=RESULTS_FILENAME,
                        purpose="fine-tune-results", content_key=file_id, sha256=hashlib.sha256(data).hexdigest())
    try:
        ctx.files.create_file(record)
    except AlreadyExists:
        pass
    return file_id


def _finish(ctx: ReconcileContext, job: JobRecord, status: str, *, error: dict[str, Any] | None = None,
            when: float | None = None) -> bool:
    finished = int(when or ctx.clock())
    if status == "failed":
        message = f"Fine-tuning job failed: {error['message']}" if error else "Fine-tuning job failed"
        _event(ctx, job, message, stamp=_stamp(finished, 2), key="failed", level="error")
    elif status == "cancelled":
        _event(ctx, job, "Fine-tuning job cancelled", stamp=_stamp(finished, 2), key="cancelled")
    return _update(ctx, job, status=status, finished_at=finished, estimated_finish=None,
                   error={k: v for k, v in (error or {}).items() if k in ("code", "message", "param")} or None)


def _update(ctx: ReconcileContext, job: JobRecord, **changes: Any) -> bool:
    new_status = changes.get("status", job.status)
    if new_status != job.status and not _reachable(job.status, new_status):
        log.warning("job %s: refusing %s -> %s", job.id, job.status, new_status)
        return False
    # Validated, not model_copy'd: a malformed change fails here instead of being stored.
    ctx.jobs.update_job(JobRecord.model_validate({**job.model_dump(), **changes}))  # Conflict: retried next pass
    return True


def _with(ctx: ReconcileContext, job: JobRecord, **changes: Any) -> JobRecord:
    """Store a change that is not a transition, and go on with the stored record."""
    return ctx.jobs.update_job(JobRecord.model_validate({**job.model_dump(), **changes}))


def _reachable(current: str, new: str) -> bool:
    # A run can finish between two passes, so "queued -> succeeded" is "queued -> running -> succeeded".
    return can_transition(current, new) or (can_transition(current, "running") and can_transition("running", new))


def _stamp(seconds: float, order: int = 0) -> int:
    """Microseconds for an event id. Closing events sort after the trainer's events of that second."""
    return int(seconds) * 1_000_000 + (999_000 + order if order else 0)


def _event(ctx: ReconcileContext, job: JobRecord, message: str, *, stamp: int, key: str, level: str = "info") -> None:
    ctx.jobs.append_event(job.project, EventRecord(
        id=stable_id("ftevent", stamp, f"{job.id}\nreconciler\n{key}"), job_id=job.id,
        created_at=stamp // 1_000_000, level=level, message=message,
    ))
