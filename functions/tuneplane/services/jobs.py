"""Fine-tuning jobs: create (with every check that needs stored state), read, and the user's
control actions (cancel, pause, resume).

Control actions record what the user wants in ``desired_status``. When nothing is running yet
(no ``backend_ref``) the API also makes the observed move itself, because there is nothing to stop:
cancelling a queued job makes it ``cancelled``; pausing it makes it ``paused`` (the reconciler will
not submit it); resuming puts it back to ``queued``. Once a run exists, only ``desired_status``
changes here and the reconciler, which can talk to the backend, moves ``status``.
"""

from __future__ import annotations

import secrets
import time

from tuneplane.api.errors import ApiError, bad_request, not_found
from tuneplane.domain.catalog import Catalog
from tuneplane.domain.estimate import estimate_for_job
from tuneplane.domain.ids import new_id, parse_fine_tuned_model
from tuneplane.domain.jobs import (
    SEED_MAX,
    CreateJobRequest,
    PeftConfig,
    is_terminal,
    render_method,
    resolve_hyperparameters,
)
from tuneplane.domain.records import CheckpointRecord, EventRecord, FileRecord, JobRecord
from tuneplane.ports import Conflict, FileStore, JobStore

_FORMAT_FOR_METHOD = {"supervised": "chat", "dpo": "dpo"}
# Computes that run serverless on Azure ML (tuneplane.backends.azure_ml_jobs.SERVERLESS_ALIASES).
_SERVERLESS_COMPUTE = frozenset({"serverless", "local", "auto"})


class JobService:
    def __init__(self, jobs: JobStore, files: FileStore, catalog: Catalog, *, min_examples: int = 10,
                 serverless_tier: str = "standard", instance_types: dict | None = None):
        self.jobs = jobs
        self.files = files
        self.catalog = catalog
        self.min_examples = min_examples
        # What the estimate prices (tuneplane.wiring.estimate_options): the operator's price table,
        # and the queue tier that serverless jobs will really run in.
        self.serverless_tier = serverless_tier
        self.instance_types = instance_types
        # Called after a job is created or a control action is recorded: the server nudges the
        # reconciler with it, so the move happens now instead of at the next interval.
        self.on_change = None

    # -- create ---------------------------------------------------------------------------------

    def create(self, project: str, req: CreateJobRequest, *, idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        method_type = req.method_type()
        self._check_method(req)
        self._check_model(project, req.model)
        training = self._check_file(project, req.training_file, "training_file", method_type, self.min_examples)
        validation = None
        if req.validation_file is not None:
            validation = self._check_file(project, req.validation_file, "validation_file", method_type, 1)
        hyperparameters = resolve_hyperparameters(req.requested_hyperparameters(), training.example_count)
        now = int(time.time())
        record = JobRecord(
            id=new_id("ftjob"),
            project=project,
            created_at=now,
            status="queued",
            model=req.model,
            training_file=req.training_file,
            validation_file=req.validation_file,
            seed=req.seed if req.seed is not None else secrets.randbelow(SEED_MAX + 1),
            user_provided_suffix=req.suffix,
            metadata=req.metadata,
            integrations=req.integrations or None,
            method=render_method(method_type, hyperparameters),
            peft=(req.peft or PeftConfig()).model_dump(),
            compute=req.compute,
            deploy=req.deploy,
        )
        # A cluster's nodes are priced by the cluster (infra's lowPriority), not by the serverless tier.
        tier = self.serverless_tier if record.compute in _SERVERLESS_COMPUTE else "standard"
        record.estimate = estimate_for_job(record, training.bytes, validation.bytes if validation is not None else 0,
                                           tier=tier, instance_types=self.instance_types)
        if req.dry_run:
            return record, False  # checked and estimated; nothing is stored
        job, created = self.jobs.create_job(record, idempotency_key=idempotency_key)
        if created:
            self._event(job, f"Validating training file: {job.training_file}", now)
            self._event(job, "Files validated, moving job to queued state", now)
            if self.on_change is not None:
                self.on_change()
        return job, created

    def _check_method(self, req: CreateJobRequest) -> None:
        method = req.method
        if method is None:
            return
        if method.type == "reinforcement":
            raise bad_request(
                "method.type 'reinforcement' is not supported by this service; use 'supervised' or 'dpo'.",
                param="method.type",
                code="unsupported_method",
            )
        for other in ("supervised", "dpo", "reinforcement"):
            if other != method.type and getattr(method, other) is not None:
                raise bad_request(
                    f"method.{other} must not be given when method.type is '{method.type}'.",
                    param=f"method.{other}",
                    code="invalid_value",
                )
        if req.hyperparameters is not None:
            raise bad_request(
                f"Give hyperparameters in method.{method.type}.hyperparameters, not at the top level, when 'method' is set.",
                param="hyperparameters",
                code="invalid_value",
            )

    def _check_model(self, project: str, model: str) -> None:
        if model in self.catalog:
            return
        parts = parse_fine_tuned_model(model)
        if parts is not None and parts["project"] == project:
            source = self.jobs.get_job(project, parts["job_id"])
            if source is not None and source.status == "succeeded" and source.fine_tuned_model == model:
                return
        raise bad_request(
            f"The model '{model}' does not exist or you do not have access to it. "
            f"Base models: {', '.join(m.id for m in self.catalog.models())}.",
            param="model",
            code="model_not_found",
        )

    def _check_file(self, project: str, file_id: str, param: str, method_type: str, minimum: int) -> FileRecord:
        record = self.files.get_file(project, file_id)
        if record is None:
            raise bad_request(f"File '{file_id}' not found.", param=param, code="file_not_found")
        if record.purpose != "fine-tune":
            raise bad_request(
                f"File '{file_id}' has purpose '{record.purpose}'; fine-tuning needs purpose 'fine-tune'.",
                param=param,
                code="invalid_file_purpose",
            )
        wanted = _FORMAT_FOR_METHOD[method_type]
        if record.format != wanted:
            raise bad_request(
                f"File '{file_id}' holds {record.format} examples, but method '{method_type}' needs {wanted} examples"
                + (" (preference data with preferred_output and non_preferred_output)." if wanted == "dpo" else "."),
                param=param,
                code="invalid_file_format",
            )
        if record.example_count < minimum:
            raise bad_request(
                f"File '{file_id}' has {record.example_count} examples; at least {minimum} are required.",
                param=param,
                code="too_few_examples",
            )
        return record

    def _event(self, job: JobRecord, message: str, now: int, level: str = "info") -> None:
        self.jobs.append_event(
            job.project,
            EventRecord(id=new_id("ftevent"), job_id=job.id, created_at=now, level=level, message=message),
        )

    # -- read -----------------------------------------------------------------------------------

    def get(self, project: str, job_id: str) -> JobRecord:
        job = self.jobs.get_job(project, job_id)
        if job is None:
            raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id", code="fine_tuning_job_not_found")
        return job

    def list(self, project: str, *, limit: int, after: str | None, metadata: dict[str, str] | None):
        records = self.jobs.list_jobs(project, limit=limit + 1, after=after, metadata=metadata)
        return records[:limit], len(records) > limit

    def events(self, project: str, job_id: str, *, limit: int, after: str | None) -> tuple[list[EventRecord], bool]:
        self.get(project, job_id)
        records = self.jobs.list_events(project, job_id, limit=limit + 1, after=after)
        return records[:limit], len(records) > limit

    def checkpoints(self, project: str, job_id: str, *, limit: int, after: str | None) -> tuple[list[CheckpointRecord], bool]:
        self.get(project, job_id)
        records = self.jobs.list_checkpoints(project, job_id, limit=limit + 1, after=after)
        return records[:limit], len(records) > limit

    def fine_tuned_models(self, project: str) -> list[JobRecord]:
        """Succeeded jobs with a model, newest first (walks the project's jobs page by page)."""
        found, after = [], None
        while True:
            page = self.jobs.list_jobs(project, limit=500, after=after)
            found += [j for j in page if j.status == "succeeded" and j.fine_tuned_model]
            if len(page) < 500:
                return found
            after = page[-1].id

    # -- control --------------------------------------------------------------------------------

    def cancel(self, project: str, job_id: str) -> JobRecord:
        def change(job: JobRecord) -> dict | None:
            if is_terminal(job.status):
                raise _not_now(job, "cancel")
            if job.desired_status == "cancel":
                return None
            if job.backend_ref is None:
                return {"desired_status": "cancel", "status": "cancelled", "finished_at": int(time.time())}
            return {"desired_status": "cancel"}

        return self._control(project, job_id, change, "Job cancellation requested")

    def pause(self, project: str, job_id: str) -> JobRecord:
        def change(job: JobRecord) -> dict | None:
            if is_terminal(job.status) or job.desired_status == "cancel":
                raise _not_now(job, "pause")
            if job.status == "paused" or job.desired_status == "pause":
                return None
            if job.backend_ref is None:
                return {"desired_status": "pause", "status": "paused"}
            return {"desired_status": "pause"}

        return self._control(project, job_id, change, "Job pause requested")

    def resume(self, project: str, job_id: str) -> JobRecord:
        def change(job: JobRecord) -> dict | None:
            if is_terminal(job.status) or job.desired_status == "cancel":
                raise _not_now(job, "resume")
            if job.desired_status == "run" and job.status != "paused":
                return None
            if job.backend_ref is None:
                return {"desired_status": "run", "status": "queued"}
            return {"desired_status": "run"}

        return self._control(project, job_id, change, "Job resume requested")

    def _control(self, project: str, job_id: str, change, message: str) -> JobRecord:
        # Compare-and-swap: if the reconciler updated the job meanwhile, re-read and decide again.
        for _ in range(20):
            job = self.get(project, job_id)
            update = change(job)
            if update is None:
                return job
            try:
                updated = self.jobs.update_job(job.model_copy(update=update))
            except Conflict:
                continue
            self._event(updated, message if updated.status == job.status else f"{message}; job is now {updated.status}", int(time.time()))
            if self.on_change is not None:
                self.on_change()
            return updated
        raise ApiError(409, f"Job {job_id} is being updated concurrently; retry.", param="fine_tuning_job_id", code="conflict")


def _not_now(job: JobRecord, action: str) -> ApiError:
    return bad_request(
        f"Cannot {action} job {job.id}: its status is '{job.status}'.",
        param="fine_tuning_job_id",
        code="invalid_job_state",
    )
