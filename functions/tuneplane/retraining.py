"""Event-driven retraining: a blob of new training data starts a fine-tuning job, and the result is
deployed only if it beats the model it would replace.

``RetrainingHandler.blob_created`` is the one entry point, whoever noticed the blob: the Event Grid
trigger in Azure (``function_app.training_blob_created``), the local inbox watcher, or the Azurite
container feed (tuneplane.inbox). For each policy whose prefix covers the blob it:

1. looks the (policy, blob, etag) trigger up in the ledger: Event Grid delivers at least once, so a
   redelivery, or the same blob announced under another event id, returns the recorded outcome;
2. imports the blob as a File through the same streaming validation as an upload; an invalid file
   is recorded as a policy event and announced by webhook, and starts nothing;
3. claims the policy's debounce slot (compare-and-swap on the policy), then creates the job with an
   idempotency key derived from the trigger, and ``metadata`` naming the blob and the parent model.

Every step is idempotent or guarded, so a crash anywhere is repaired by the redelivery.

``PromotionGate`` is the reconciler's hook on a retraining job's success (``ReconcileContext.promotion``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from tuneplane.api.errors import ApiError, bad_request, not_found
from tuneplane.backends.run_output import stable_id
from tuneplane.domain.catalog import Catalog
from tuneplane.domain.ids import new_id
from tuneplane.domain.jobs import CreateJobRequest
from tuneplane.domain.policies import (
    CreatePolicyRequest,
    PolicyEventRecord,
    PolicyRecord,
    TriggerRecord,
)
from tuneplane.domain.records import JobRecord
from tuneplane.ports import AlreadyExists, Conflict, JobStore, NotFound
from tuneplane.services.files import FileService
from tuneplane.services.jobs import JobService

log = logging.getLogger("tuneplane.retraining")

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBJECT_PREFIX = "/blobServices/default/containers/"
INVALID_FILE_EVENT = "retraining.file_invalid"
_CAS_ATTEMPTS = 20


class PolicyStore(Protocol):
    """Adapters: tuneplane.stores.sqlite_policies, tuneplane.stores.azure_policies."""

    def create_policy(self, record: PolicyRecord) -> None: ...
    def get_policy(self, project: str, policy_id: str) -> PolicyRecord | None: ...
    def find_policy(self, project: str, name: str) -> PolicyRecord | None: ...
    def list_policies(self, project: str, *, limit: int = 20, after: str | None = None) -> list[PolicyRecord]: ...
    def all_policies(self) -> list[PolicyRecord]: ...
    def update_policy(self, record: PolicyRecord) -> PolicyRecord: ...
    def delete_policy(self, project: str, policy_id: str) -> bool: ...
    def get_trigger(self, key: str) -> TriggerRecord | None: ...
    def claim_trigger(self, record: TriggerRecord) -> TriggerRecord: ...
    def put_trigger(self, record: TriggerRecord) -> None: ...
    def append_policy_event(self, project: str, event: PolicyEventRecord) -> bool: ...
    def list_policy_events(self, project: str, policy_id: str, *, limit: int = 20,
                           after: str | None = None) -> list[PolicyEventRecord]: ...


class BlobSource(Protocol):
    """Where triggering blobs are read from: a blob container in Azure, the inbox folder locally.
    A missing blob raises tuneplane.ports.NotFound (when iterated)."""

    def open_read(self, container: str, path: str) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class BlobCreated:
    event_id: str
    container: str
    path: str
    etag: str

    @property
    def blob(self) -> str:
        return f"{self.container}/{self.path}"


def parse_blob_created(event_id: str, event_type: str, subject: str, data: dict[str, Any]) -> BlobCreated:
    """The blob an Event Grid ``Microsoft.Storage.BlobCreated`` event announces (ValueError if none)."""
    if event_type != BLOB_CREATED:
        raise ValueError(f"eventType: expected {BLOB_CREATED}, got {event_type!r}")
    if not subject.startswith(SUBJECT_PREFIX) or "/blobs/" not in subject:
        raise ValueError(f"subject: not a blob subject: {subject!r}")
    container, _, path = subject[len(SUBJECT_PREFIX):].partition("/blobs/")
    if not container or not path:
        raise ValueError(f"subject: no container or blob path in {subject!r}")
    # A blob's ETag changes with every write, so (blob, etag) names one version of the data.
    etag = str((data or {}).get("eTag") or (data or {}).get("etag") or event_id)
    return BlobCreated(event_id=event_id, container=container, path=path, etag=etag.strip('"'))


def trigger_key(policy_id: str, blob: BlobCreated) -> str:
    return hashlib.sha256(f"{policy_id}\n{blob.container}\n{blob.path}\n{blob.etag}".encode()).hexdigest()


class PolicyService:
    """Create, read and delete policies; every check that needs stored state."""

    def __init__(self, store: PolicyStore, jobs: JobService, catalog: Catalog, *, clock: Callable[[], float] = time.time,
                 containers: frozenset[str] | None = None):
        self.store, self.jobs, self.catalog, self.clock = store, jobs, catalog, clock
        self.containers = containers  # the only containers whose uploads reach the app (None: any)

    def create(self, project: str, req: CreatePolicyRequest) -> PolicyRecord:
        if self.containers is not None and req.blob_prefix.container not in self.containers:
            # Event Grid delivers BlobCreated from the training-data container only: a policy on
            # another container would never fire.
            raise bad_request(f"blob_prefix.container must be {' or '.join(sorted(self.containers))}: only uploads "
                              f"there reach this service, not {req.blob_prefix.container!r}.",
                              param="blob_prefix.container", code="container_not_watched")
        lineage = req.lineage()
        if lineage is not None:
            if lineage != req.name and self.store.find_policy(project, lineage) is None:
                raise bad_request(f"model: lineage policy '{lineage}' does not exist.", param="model", code="model_not_found")
            # Any peft type: each job continues from the last promoted model, a full model folder or an
            # adapter (trained further as init_adapter; see tuneplane.model_source). A peft.type that
            # cannot continue that adapter fails the job, naming peft.type, before it trains.
        else:
            self.jobs._check_model(project, req.model)
        try:  # the jobs this policy will create must pass job validation: check the shape now
            CreateJobRequest(model="x", training_file="file-x", method=req.job_method(), peft=req.peft,
                             compute=req.compute, suffix=req.suffix)
        except ValueError as err:
            first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
            loc = [str(p) for p in first["loc"] if p not in ("method", "supervised", "dpo")]
            raise bad_request(f"Invalid policy: {'.'.join(loc) or 'hyperparameters'}: {first['msg']}",
                              param=".".join(loc) or "hyperparameters") from err
        if req.promotion is not None and req.validation_file is None:
            raise bad_request("validation_file is required when a promotion rule is set: every retraining is "
                              "scored on it, so validation losses compare.", param="validation_file")
        if req.validation_file is not None:
            self.jobs._check_file(project, req.validation_file, "validation_file", req.method, 1)
        for other in self.store.all_policies():
            if other.project != project and other.blob_prefix.overlaps(req.blob_prefix):
                raise ApiError(409, f"blob_prefix '{req.blob_prefix}' overlaps a prefix watched by another project.",
                               param="blob_prefix", code="blob_prefix_taken")
        record = PolicyRecord(id=new_id("rtpol"), project=project, created_at=int(self.clock()), **req.model_dump())
        try:
            self.store.create_policy(record)
        except AlreadyExists as exc:
            raise ApiError(409, f"A retraining policy named '{req.name}' already exists.", param="name",
                           code="policy_exists") from exc
        return record

    def get(self, project: str, policy_id: str) -> PolicyRecord:
        record = self.store.get_policy(project, policy_id)
        if record is None:
            raise not_found("retraining policy", policy_id, param="policy_id", code="policy_not_found")
        return record

    def list(self, project: str, *, limit: int, after: str | None) -> tuple[list[PolicyRecord], bool]:
        records = self.store.list_policies(project, limit=limit + 1, after=after)
        return records[:limit], len(records) > limit

    def delete(self, project: str, policy_id: str) -> None:
        if not self.store.delete_policy(project, policy_id):
            raise not_found("retraining policy", policy_id, param="policy_id", code="policy_not_found")

    def events(self, project: str, policy_id: str, *, limit: int, after: str | None) -> tuple[list[PolicyEventRecord], bool]:
        self.get(project, policy_id)
        records = self.store.list_policy_events(project, policy_id, limit=limit + 1, after=after)
        return records[:limit], len(records) > limit


def policy_event(store: PolicyStore, policy: PolicyRecord, message: str, *, key: str, now: float,
                 level: str = "info", data: dict[str, Any] | None = None) -> None:
    """Idempotent by ``key``: a redelivered event or a repeated reconcile pass records it once."""
    store.append_policy_event(policy.project, PolicyEventRecord(
        id=stable_id("rtevent", int(now * 1_000_000), f"{policy.id}\n{key}"), policy_id=policy.id,
        created_at=int(now), level=level, message=message, data=data))


class RetrainingHandler:
    def __init__(self, store: PolicyStore, files: FileService, jobs: JobService, source: BlobSource, *,
                 notify: Callable[[str, dict[str, Any]], None] | None = None, clock: Callable[[], float] = time.time):
        self.store, self.files, self.jobs, self.source = store, files, jobs, source
        self.notify = notify  # (project, webhook payload) for an invalid file
        self.clock = clock

    def blob_created(self, blob: BlobCreated) -> list[TriggerRecord]:
        """Start what every covering policy asks for; returns one trigger record per policy."""
        policies = [p for p in self.store.all_policies() if p.blob_prefix.covers(blob.container, blob.path)]
        if not policies:
            log.info("no retraining policy covers %s", blob.blob)
        return [self._trigger(policy, blob) for policy in policies]

    def _trigger(self, policy: PolicyRecord, blob: BlobCreated) -> TriggerRecord:
        key = trigger_key(policy.id, blob)
        now = self.clock()
        seen = self.store.get_trigger(key)
        if seen is not None and seen.outcome != "importing":
            if blob.event_id not in seen.event_ids:  # remember the other id, for whoever investigates
                seen = seen.model_copy(update={"event_ids": [*seen.event_ids, blob.event_id]})
                self.store.put_trigger(seen)
            return seen
        base = TriggerRecord(key=key, project=policy.project, policy_id=policy.id, blob=blob.blob, etag=blob.etag,
                             outcome="importing", created_at=int(now), event_ids=[blob.event_id])
        if self._debounced(policy, key, now):
            return self._settle(policy, base, "debounced", now,
                                f"Skipped {blob.blob}: less than {policy.min_interval_seconds}s since the last retraining.")
        parent = self._parent_model(policy)
        if parent is None:
            return self._settle(policy, base, "skipped", now,
                                f"Skipped {blob.blob}: the lineage policy '{policy.lineage()}' has no promoted model yet.",
                                level="warn")
        try:
            record = self._import(policy, blob)
            # What job creation will check of the file (format for the method, enough examples): an
            # unusable file is refused here, before it takes the debounce slot.
            self.jobs._check_file(policy.project, record.id, "training_file", policy.method, self.jobs.min_examples)
        except NotFound:  # deleted before we read it: a retry cannot bring it back
            return self._settle(policy, base, "skipped", now, f"Skipped {blob.blob}: the blob no longer exists.", level="warn")
        except ApiError as err:
            if err.param == "training_file":
                self.files.delete(policy.project, record.id)
            outcome = self._settle(policy, base, "invalid", now, f"{blob.blob} was not imported: {err.message}",
                                   level="error", data={"param": err.param, "code": err.code})
            self._announce_invalid(policy, outcome, err)
            return outcome
        claimed = self.store.claim_trigger(base.model_copy(update={"file_id": record.id}))
        if claimed.file_id != record.id:  # a concurrent delivery imported it first: keep theirs
            self.files.delete(policy.project, record.id)
        if claimed.outcome != "importing":
            return claimed
        if not self._claim_slot(policy, key, now):
            self.files.delete(policy.project, claimed.file_id)
            return self._settle(policy, claimed.model_copy(update={"file_id": None}), "debounced", now,
                                f"Skipped {blob.blob}: another retraining started less than {policy.min_interval_seconds}s ago.")
        request = CreateJobRequest(
            model=parent, training_file=claimed.file_id, validation_file=policy.validation_file,
            method=policy.job_method(), peft=policy.peft, compute=policy.compute, suffix=policy.suffix,
            metadata={"retraining_policy": policy.id, "trigger_blob": blob.blob[-512:], "trigger_etag": blob.etag[:512],
                      "parent_model": parent},
        )
        try:
            job, _ = self.jobs.create(policy.project, request, idempotency_key=f"retraining:{key}")
        except ApiError as err:  # e.g. too few examples, or a lineage model that is gone
            return self._settle(policy, claimed, "invalid", now, f"No job for {blob.blob}: {err.message}", level="error",
                                data={"param": err.param, "code": err.code})
        outcome = claimed.model_copy(update={"outcome": "job_created", "job_id": job.id})
        self.store.put_trigger(outcome)
        policy_event(self.store, policy, f"Started fine-tuning job {job.id} for {blob.blob}", key=f"job\n{key}", now=now,
                     data={"job_id": job.id, "file_id": claimed.file_id, "parent_model": parent})
        return outcome

    def _settle(self, policy: PolicyRecord, trigger: TriggerRecord, outcome: str, now: float, message: str, *,
                level: str = "info", data: dict[str, Any] | None = None) -> TriggerRecord:
        settled = trigger.model_copy(update={"outcome": outcome, "detail": message})
        self.store.put_trigger(settled)
        policy_event(self.store, policy, message, key=f"{outcome}\n{trigger.key}", now=now, level=level,
                     data={"blob": trigger.blob, "etag": trigger.etag, **(data or {})})
        return settled

    def _debounced(self, policy: PolicyRecord, key: str, now: float) -> bool:
        last = policy.last_triggered_at
        return bool(policy.min_interval_seconds and last is not None and policy.last_trigger != key
                    and now - last < policy.min_interval_seconds)

    def _claim_slot(self, policy: PolicyRecord, key: str, now: float) -> bool:
        """Move the policy's debounce slot to this trigger; False if another trigger holds it."""
        for _ in range(_CAS_ATTEMPTS):
            current = self.store.get_policy(policy.project, policy.id)
            if current is None or self._debounced(current, key, now):
                return False
            if current.last_trigger == key:
                return True
            try:
                self.store.update_policy(current.model_copy(update={"last_triggered_at": int(now), "last_trigger": key}))
                return True
            except Conflict:
                continue
        return False

    def _parent_model(self, policy: PolicyRecord) -> str | None:
        lineage = policy.lineage()
        if lineage is None:
            return policy.model
        source = self.store.find_policy(policy.project, lineage)  # fresh, even when it is this policy
        return source.promoted_model if source is not None else None

    def _import(self, policy: PolicyRecord, blob: BlobCreated):
        filename = blob.path.rsplit("/", 1)[-1]
        session = self.files.begin_upload(policy.project, "fine-tune", filename)
        try:
            for chunk in self.source.open_read(blob.container, blob.path):
                session.feed(chunk)
        except ApiError:
            raise
        except BaseException:
            session.abort()
            raise
        return session.finish()

    def _announce_invalid(self, policy: PolicyRecord, trigger: TriggerRecord, err: ApiError) -> None:
        if self.notify is None:
            return
        payload = {"id": "evt_" + trigger.key[:32], "object": "event", "created_at": trigger.created_at,
                   "type": INVALID_FILE_EVENT,
                   "data": {"policy_id": policy.id, "blob": trigger.blob, "etag": trigger.etag,
                            "error": {"message": err.message, "param": err.param, "code": err.code}}}
        try:
            self.notify(policy.project, payload)
        except Exception:  # the event is recorded either way; a receiver being down must not fail the trigger
            log.exception("announcing the invalid file %s failed", trigger.blob)


def final_valid_loss(jobs: JobStore, job: JobRecord) -> float | None:
    """The last validation loss the run reported (its metrics events, newest first)."""
    after = None
    while True:
        page = jobs.list_events(job.project, job.id, limit=100, after=after)
        for event in page:
            loss = (event.data or {}).get("valid_loss") if event.type == "metrics" else None
            if loss is not None:
                return float(loss)
        if len(page) < 100:
            return None
        after = page[-1].id


class PromotionGate:
    """Decides whether a finished retraining job's model replaces the policy's current model."""

    def __init__(self, store: PolicyStore, jobs: JobStore, *, clock: Callable[[], float] = time.time):
        self.store, self.jobs, self.clock = store, jobs, clock

    def decide(self, job: JobRecord, model: str) -> tuple[bool, str] | None:
        """(deploy?, why); None for a job no policy started (deployed as usual)."""
        policy = self._policy(job)
        if policy is None:
            return None
        if policy.promoted_job == job.id:
            return True, "already promoted"
        if policy.promotion is None:
            verdict = (True, "The policy has no promotion rule: every new model is deployed.")
        else:
            verdict = self._compare(policy, final_valid_loss(self.jobs, job))
        promote, reason = verdict
        policy_event(self.store, policy, f"{'Promoting' if promote else 'Not promoting'} {model}: {reason}",
                     key=f"decision\n{job.id}", now=self.clock(), level="info" if promote else "warn",
                     data={"job_id": job.id, "model": model, "promoted": promote})
        return verdict

    def _compare(self, policy: PolicyRecord, loss: float | None) -> tuple[bool, str]:
        margin = policy.promotion.margin
        current = policy.promoted_valid_loss
        if loss is None:
            return False, "the job reported no validation loss to compare."
        if policy.promoted_model is None or current is None:
            return True, f"validation loss {loss:.4f}; the policy has no current model."
        if loss < current - margin:
            return True, f"validation loss {loss:.4f} beats the current model {policy.promoted_model} ({current:.4f}) by more than {margin}."
        return False, (f"validation loss {loss:.4f} does not beat the current model {policy.promoted_model} "
                       f"({current:.4f}) by more than the margin {margin}; keeping the current model.")

    def promoted(self, job: JobRecord, model: str, deployment: dict[str, Any]) -> None:
        """Record a successful deployment as the policy's current model."""
        if deployment.get("status") == "failed":
            return
        loss = final_valid_loss(self.jobs, job)
        for _ in range(_CAS_ATTEMPTS):
            policy = self._policy(job)
            if policy is None or policy.promoted_job == job.id:
                return
            try:
                self.store.update_policy(policy.model_copy(update={
                    "promoted_model": model, "promoted_job": job.id, "promoted_valid_loss": loss}))
                break
            except Conflict:
                continue
        policy_event(self.store, policy, f"Promoted {model}", key=f"promoted\n{job.id}", now=self.clock(),
                     data={"job_id": job.id, "model": model, "valid_loss": loss})

    def _policy(self, job: JobRecord) -> PolicyRecord | None:
        policy_id = (job.metadata or {}).get("retraining_policy")
        return self.store.get_policy(job.project, policy_id) if policy_id else None


def webhook_notifier(webhooks: Any, *, timeout: float = 10.0) -> Callable[[str, dict[str, Any]], None]:
    """Signed (Standard Webhooks) POSTs of an invalid-file notice to the project's endpoints that hear
    failures (``fine_tuning.job.failed``): a retraining that could not start is the closest thing."""
    import httpx

    from tuneplane.webhooks import sign

    def notify(project: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"))
        for endpoint in webhooks.list_endpoints(project, limit=100):
            if "fine_tuning.job.failed" not in endpoint["event_types"]:
                continue
            stamp = int(time.time())
            headers = {"content-type": "application/json", "webhook-id": payload["id"],
                       "webhook-timestamp": str(stamp), "webhook-signature": sign(endpoint["secret"], payload["id"], stamp, body)}
            try:
                httpx.post(endpoint["url"], content=body.encode(), headers=headers, timeout=timeout)
            except httpx.HTTPError as exc:
                log.warning("invalid-file webhook to %s failed: %s", endpoint["url"], exc)

    return notify
