"""TrainingBackend on Azure ML: one command job per attempt of a fine-tuning job.

``submit`` is idempotent by the Azure ML job name (derived from our job id): after a crash, the
reconciler's next pass finds the run it already created and adopts it. Progress comes back from the
trainer's own output folder on the datastore (``events.jsonl``, ``checkpoints/*/checkpoint.json``,
``manifest.json``), which the job writes through a read-write mount while it runs.

Azure ML cannot pause a command job, so ``pause`` cancels it: the trainer catches SIGTERM, saves a
checkpoint and stops; the next attempt resumes from it (same output folder, ``resume: auto``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from tuneplane.backends import azure_ml_jobs as jobs_
from tuneplane.backends.azure_config import AzureSettings
from tuneplane.backends.azure_ml_errors import Retry
from tuneplane.domain import estimate as est
from tuneplane.domain.records import CheckpointRecord, EventRecord, JobRecord
from tuneplane.ports import BackendError, CapacityUnavailable, NotFound, PermanentBackendError

# Azure ML JobStatus → ours. CancelRequested is still running until Azure ML says Canceled.
STATUS_MAP: dict[str, str] = {
    "NotStarted": "queued",
    "Starting": "queued",
    "Provisioning": "queued",
    "Preparing": "queued",
    "Queued": "queued",
    "Running": "running",
    "Finalizing": "running",
    "CancelRequested": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Canceled": "cancelled",
    "NotResponding": "unknown",
    "Paused": "paused",
    "Unknown": "unknown",
}

# tuneplane-train's exit codes (training/SPEC.md) → the job's error.code.
EXIT_CODE_ERRORS = {2: "invalid_training_input", 3: "non_finite_loss", 4: "out_of_memory"}


@dataclass
class AzureRunState:
    status: Literal["queued", "running", "paused", "succeeded", "failed", "cancelled", "unknown"]
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    output_uri: str | None = None
    azure_status: str | None = None
    attempt: int = 0  # 1 for the first Azure ML job of this fine-tuning job, 2 after a resume, …
    started_at: int | None = None
    finished_at: int | None = None


def event_id(job_id: str, seq: int, created_at: int) -> str:
    """Stable and time-sortable: the trainer's (created_at, seq) then a digest of the job and seq,
    in the shape of tuneplane.domain.ids (14 hex digits of microseconds, 10 more hex digits)."""
    stamp = created_at * 1_000_000 + seq % 1_000_000
    digest = hashlib.sha256(f"{job_id}:{seq}".encode()).hexdigest()[:10]
    return f"ftevent-{stamp:014x}{digest}"


def note_event_id(job_id: str, name: str, message: str, created_at: int) -> str:
    digest = hashlib.sha256(f"{job_id}:{name}:{message}".encode()).hexdigest()[:10]
    return f"ftevent-{created_at * 1_000_000:014x}{digest}"


def checkpoint_id(job_id: str, step: int, created_at: int) -> str:
    digest = hashlib.sha256(f"{job_id}:ckpt:{step}".encode()).hexdigest()[:10]
    return f"ftckpt-{created_at * 1_000_000 + step % 1_000_000:014x}{digest}"


class AzureTrainingBackend:
    def __init__(self, ml_client: Any, contents: Any, settings: AzureSettings, *, retry: Retry | None = None) -> None:
        self.ml = ml_client
        self.contents = contents  # AzureBlobContentStore on the datastore's container
        self.settings = settings
        self.retry = retry or Retry(settings.retry_budget_s)
        self.training_dir = settings.training_dir  # resolved by azure_ml_jobs.code_of (None: the default)

    # -- submit -------------------------------------------------------------------------------
    def _get_job(self, name: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.retry.call(f"read Azure ML job {name}", self.ml.jobs.get, name)
        except PermanentBackendError as error:
            if isinstance(error.__cause__, ResourceNotFoundError):
                return None
            raise

    def placement(self, job: JobRecord, spec: dict[str, Any]) -> jobs_.Placement:
        from azure.core.exceptions import ResourceNotFoundError

        types = self.settings.instance_types()
        try:
            if job.compute in jobs_.SERVERLESS_ALIASES:
                return jobs_.serverless_placement(job, spec, tier=self.settings.serverless_tier, instance_types=types)
            cluster = self.settings.cluster_for(job.compute)  # "cpu"/"gpu": the clusters infra created
            try:
                compute = self.retry.call(f"read compute {cluster}", self.ml.compute.get, cluster)
            except PermanentBackendError as error:
                if isinstance(error.__cause__, ResourceNotFoundError):
                    raise PermanentBackendError(
                        "compute_not_found",
                        f"compute: there is no compute cluster named {cluster!r} in workspace {self.settings.workspace}",
                    ) from error
                raise
            size = getattr(compute, "size", None)
            if not size:
                raise PermanentBackendError("compute_not_usable", f"compute: {cluster!r} is not a compute cluster")
            return jobs_.cluster_placement(job, spec, name=cluster, vm_size=size,
                                           max_instances=int(getattr(compute, "max_instances", 1) or 1), instance_types=types)
        except est.EstimateError as error:
            raise PermanentBackendError("compute_not_sized", str(error)) from error

    def _check_environment(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        ref = self.settings.environment
        if not ref:
            return
        match = re.fullmatch(r"(?:azureml:)?([^:@]+)(?::([^:@]+)|@latest)?", ref)
        if match is None:
            raise PermanentBackendError("invalid_environment", f"TUNEPLANE_AZURE_ENVIRONMENT {ref!r} is not azureml:NAME:VERSION")
        name, version = match.group(1), match.group(2)
        try:
            if version:
                self.retry.call(f"read environment {ref}", self.ml.environments.get, name, version=version)
            else:
                self.retry.call(f"read environment {ref}", self.ml.environments.get, name, label="latest")
        except PermanentBackendError as error:
            if isinstance(error.__cause__, ResourceNotFoundError):
                raise PermanentBackendError("environment_not_found", f"environment: {ref} does not exist in the workspace") from error
            raise

    def _stage_inputs(self, job: JobRecord, spec: dict[str, Any], placement: jobs_.Placement) -> None:
        folder = jobs_.run_folder(job.id) + "/input/"
        sources = {"training_file": "training.jsonl", "validation_file": "validation.jsonl"}
        for field, target in sources.items():
            uri = spec.get(field)
            if not uri:
                continue
            key = self.contents.key_of(str(uri))
            if key is None:
                raise PermanentBackendError(
                    "file_not_on_datastore", f"{field}: {uri} is not in container {self.settings.files_container}"
                )
            try:
                self.contents.copy(key, folder + target)
            except NotFound as error:
                raise PermanentBackendError("file_not_found", f"{field}: the content of {uri} is gone") from error
        staged = jobs_.job_spec(spec, placement, has_validation=bool(spec.get("validation_file")))
        self.contents.put_bytes(folder + "spec.json", json.dumps(staged, indent=2, sort_keys=True).encode())

    def build(self, job: JobRecord, spec: dict[str, Any], name: str | None = None) -> tuple[Any, jobs_.Placement]:
        placement = self.placement(job, spec)
        entity = jobs_.build_command_job(
            job, placement, name=name or jobs_.attempt_name(job.id, 0),
            datastore=self.settings.datastore, experiment=self.settings.experiment,
            environment=self.settings.environment, training_dir=self.training_dir, timeout_s=self.settings.job_timeout_s,
            init_adapter=spec.get("init_adapter"),
        )
        return entity, placement

    def _runs(self, job: JobRecord) -> list[tuple[str, Any]]:
        """Every Azure ML job of this fine-tuning job, first attempt first."""
        runs: list[tuple[str, Any]] = []
        while True:
            name = jobs_.attempt_name(job.id, len(runs))
            run = self._get_job(name)
            if run is None:
                return runs
            runs.append((name, run))

    def submit(self, job: JobRecord, spec: dict[str, Any]) -> str:
        """Create the next Azure ML job of this fine-tuning job, or adopt the live one.

        A quota/capacity refusal or a permanent refusal is written down as a note on the datastore
        instead of raised: ``observe`` then reports the job ``queued`` (with an event saying why,
        and a new try on every pass) or ``failed`` (with the code). Transient and configuration
        errors raise (BackendUnavailable, BackendMisconfigured) and change nothing.
        """
        from azure.core.exceptions import ResourceExistsError

        runs = self._runs(job)
        if runs and STATUS_MAP.get(str(getattr(runs[-1][1], "status", ""))) not in ("cancelled", "failed"):
            return runs[-1][0]  # created by an earlier pass (perhaps one that crashed right after)
        name = jobs_.attempt_name(job.id, len(runs))
        try:
            self._check_environment()
            entity, placement = self.build(job, spec, name)
            self._stage_inputs(job, spec, placement)
            try:
                self.retry.call(f"create Azure ML job {name}", self.ml.jobs.create_or_update, entity,
                                permanent_code="job_rejected")
            except PermanentBackendError as error:
                cause = error.__cause__
                if not (isinstance(cause, ResourceExistsError) or getattr(cause, "status_code", None) == 409):
                    raise
                # A concurrent pass created it first: adopt it.
        except CapacityUnavailable as error:
            self._write_note(job, name, "capacity", error)
            return name
        except PermanentBackendError as error:
            self._write_note(job, name, "failed", error)
            return name
        note = self._read_json(self._note_key(job, name))
        if note and note.get("kind") == "capacity":
            # Kept (as resolved) so the waiting event stays readable; observe ignores it now.
            self.contents.put_bytes(self._note_key(job, name), json.dumps({**note, "kind": "capacity_resolved"}).encode())
        elif note:
            self.contents.delete(self._note_key(job, name))
        return name

    # -- notes: what a refused submission leaves for observe and read_events ---------------------
    def _note_key(self, job: JobRecord, name: str) -> str:
        return jobs_.run_folder(job.id) + f"/control/{name}.json"

    def _write_note(self, job: JobRecord, name: str, kind: str, error: BackendError) -> None:
        previous = self._read_json(self._note_key(job, name)) or {}
        same = previous.get("message") == error.message and previous.get("kind") == kind
        note = {"kind": kind, "code": error.code, "message": error.message,
                "created_at": previous["created_at"] if same else int(time.time())}
        self.contents.put_bytes(self._note_key(job, name), json.dumps(note).encode())

    def _notes(self, job: JobRecord) -> list[dict[str, Any]]:
        notes = []
        prefix = jobs_.run_folder(job.id) + "/control/"
        for key in self.contents.list_keys(prefix):
            note = self._read_json(key)
            if isinstance(note, dict) and note.get("kind") in ("capacity", "capacity_resolved", "failed"):
                notes.append({**note, "name": key[len(prefix):].removesuffix(".json")})
        return notes

    # -- observe ------------------------------------------------------------------------------
    def _output(self, job: JobRecord, name: str) -> str:
        return jobs_.run_folder(job.id) + "/model/" + name  # shared by every attempt

    def _read_json(self, key: str) -> Any | None:
        try:
            return json.loads(self.contents.read_bytes(key))
        except (NotFound, ValueError):
            return None

    def _trainer_events(self, job: JobRecord) -> list[dict[str, Any]]:
        try:
            raw = self.contents.read_bytes(self._output(job, "events.jsonl"))
        except NotFound:
            return []
        events = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line while the trainer is writing
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                events.append(event)
        return events

    def _failure(self, job: JobRecord, name: str) -> dict[str, Any]:
        events = self._trainer_events(job)
        for event in reversed(events):
            if event.get("level") == "error":
                code = (event.get("data") or {}).get("exit_code")
                return {"code": EXIT_CODE_ERRORS.get(code, "training_failed"), "message": str(event.get("message"))}
        if not events:
            # The trainer never wrote a line: the environment image, the data mount or the compute
            # failed before it started.
            return {"code": "run_setup_failed",
                    "message": f"Azure ML job {name} failed before the trainer started (environment image build, "
                               "data mount or compute setup); its logs in Azure ML studio say which."}
        return {"code": "training_failed",
                "message": f"Azure ML job {name} failed without a trainer error; see its logs in Azure ML studio."}

    def observe(self, job: JobRecord) -> AzureRunState:
        runs = self._runs(job)
        note = self._read_json(self._note_key(job, jobs_.attempt_name(job.id, len(runs))))
        if note and note.get("kind") in ("capacity", "failed"):  # the newest submission was refused
            if note.get("kind") == "capacity":
                return AzureRunState("queued", attempt=len(runs))
            return AzureRunState("failed", error={"code": note.get("code"), "message": note.get("message")},
                                 attempt=len(runs))
        if not runs:
            return AzureRunState("unknown", error={"code": "run_not_found",
                                                   "message": f"no Azure ML job exists for {job.id}"})
        name, run = runs[-1]
        azure_status = str(getattr(run, "status", None) or "Unknown")
        status = STATUS_MAP.get(azure_status, "unknown")
        if status == "cancelled" and job.desired_status == "pause":
            status = "paused"
        state = AzureRunState(status, azure_status=azure_status, attempt=len(runs))  # type: ignore[arg-type]
        created = getattr(getattr(run, "creation_context", None), "created_at", None)
        if created is not None:
            state.started_at = int(created.timestamp())
        if status == "failed":
            state.error = self._failure(job, name)
        if status == "succeeded":
            state.output_uri = jobs_.job_output_uri(name)
            manifest = self._read_json(self._output(job, "manifest.json")) or {}
            state.trained_tokens = manifest.get("trained_tokens")
        elif status == "running":
            metrics = [e for e in self._trainer_events(job) if e.get("type") == "metrics" and e.get("data")]
            if metrics:
                state.trained_tokens = metrics[-1]["data"].get("trained_tokens")
        return state

    def read_events(self, job: JobRecord, after: str | None = None) -> list[EventRecord]:
        records = []
        for event in self._trainer_events(job):
            created_at = int(event.get("created_at") or job.created_at)
            record = EventRecord(
                id=event_id(job.id, event["seq"], created_at), job_id=job.id, created_at=created_at,
                level=event.get("level") if event.get("level") in ("info", "warn", "error") else "info",
                message=str(event.get("message", "")),
                type="metrics" if event.get("type") == "metrics" else "message",
                data=event.get("data") if isinstance(event.get("data"), dict) else None,
            )
            if after is None or record.id > after:
                records.append(record)
        for note in self._notes(job):
            if note["kind"] not in ("capacity", "capacity_resolved"):
                continue  # a refused job is failed with its error; the reconciler reports that
            created_at = int(note.get("created_at") or job.created_at)
            record = EventRecord(
                id=note_event_id(job.id, note["name"], str(note.get("message")), created_at), job_id=job.id,
                created_at=created_at, level="warn",
                message=f"Waiting for Azure capacity; the job stays queued and is retried: {note.get('message')}",
                data={"code": note.get("code")},
            )
            if after is None or record.id > after:
                records.append(record)
        records.sort(key=lambda r: r.id)
        return records

    def read_checkpoints(self, job: JobRecord) -> list[CheckpointRecord]:
        from tuneplane.domain.ids import fine_tuned_model_name

        prefix = self._output(job, "checkpoints/")
        model = job.fine_tuned_model or fine_tuned_model_name(job.model, job.project, job.user_provided_suffix, job.id)
        found = []
        for key in self.contents.list_keys(prefix):
            match = re.fullmatch(re.escape(prefix) + r"checkpoint-(\d+)/checkpoint\.json", key)
            info = self._read_json(key) if match else None
            if not info or info.get("complete") is not True:
                continue
            step = int(match.group(1))  # type: ignore[union-attr]
            created_at = int(info.get("created_at") or job.created_at)
            metrics = {k: (float(v) if isinstance(v, (int, float)) else None)
                       for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float)) or v is None}
            found.append(CheckpointRecord(
                id=checkpoint_id(job.id, step, created_at), job_id=job.id, created_at=created_at, step_number=step,
                fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}", metrics=metrics,
                # The datastore path: the same for every attempt (they share the output folder).
                location=jobs_.datastore_uri(self.settings.datastore, f"{prefix}checkpoint-{step}/"),
            ))
        return sorted(found, key=lambda c: c.step_number)

    def read_results(self, job: JobRecord) -> bytes | None:
        """The run's ``results.csv`` (OpenAI's step-metrics columns), for the job's result file;
        the reconciler reads a local run's file from its folder, an Azure run's through this."""
        try:
            return self.contents.read_bytes(self._output(job, "results.csv"))
        except NotFound:
            return None

    # -- control ------------------------------------------------------------------------------
    def cancel(self, job: JobRecord) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        runs = self._runs(job)
        if not runs:
            return  # never created: nothing to stop
        name = runs[-1][0]
        try:
            # The poller is not waited on: the reconciler observes Canceled on a later pass.
            self.retry.call(f"cancel Azure ML job {name}", self.ml.jobs.begin_cancel, name)
        except PermanentBackendError as error:
            if isinstance(error.__cause__, ResourceNotFoundError):
                return  # never created: nothing to stop
            raise

    def pause(self, job: JobRecord) -> None:
        self.cancel(job)
