"""FileStore, JobStore and KeyStore on Azure Table Storage (azure-data-tables).

Layout (one table per kind, all named ``{prefix}{kind}``):

| table      | PartitionKey       | RowKey                         | holds                                  |
|------------|--------------------|--------------------------------|----------------------------------------|
| files      | project            | ``d:`` + desc(id), ``a:`` + id | the file record, twice (two orders)    |
| jobs       | project            | ``j:`` + desc(id)              | the job record; status, ``md_*`` props |
| jobs       | project            | ``k:`` + sha256(idem. key)     | the job id the key first created       |
| events     | project ``:`` job  | ``e:``/``c:`` + desc(id)       | events and checkpoints of one job      |
| keys       | ``keys``           | ``id:`` + id, ``hash:`` + hash | API keys (tuneplane.stores.azure_keys) |
| unfinished | ``unfinished``     | job id                         | the reconciler's FIFO (a hint, see below)|

Table Storage sorts by (PartitionKey, RowKey) ascending and cannot scan backwards, so newest-first
lists use ``desc(id)``, an order-reversing encoding of the time-sortable id: a cursor page is one
range query on the primary key, cost O(page). Files are listed in both orders, so each file is
written twice in one batch (files are immutable, so the copies never drift).

Atomicity comes from entity-group transactions (same table and partition): a job and its
idempotency key, or a file's two rows, commit together or not at all. Updates are compare-and-swap:
the record's ``version`` is checked and the write carries the entity's ETag, so a concurrent
writer gets 412, which becomes ``Conflict``.

The ``unfinished`` index lives in another partition, so it cannot join the job's transaction. It is
written *before* the job (a crash leaves an extra hint, never a lost job), removed after a terminal
update, and entries whose job is terminal, or missing for longer than ``orphan_grace_s``, are
pruned while listing. The job row is always the truth.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from tuneplane.domain.records import (
    TERMINAL_STATUSES,
    CheckpointRecord,
    EventRecord,
    FileRecord,
    JobRecord,
)
from tuneplane.ports import AlreadyExists, Conflict, NotFound
from tuneplane.stores.azure_account import StorageAccount, storage_errors

R = TypeVar("R", bound=BaseModel)

_FORBIDDEN_KEY_CHARS = set("/\\#?")
# A string property holds at most 64 KiB of UTF-16; records larger than one chunk span several.
_CHUNK_CHARS = 30_000
_MAX_CHUNKS = 30


def desc(value: str) -> str:
    """Order-reversing, prefix-safe key: desc(a) > desc(b) exactly when a < b.

    Each UTF-8 byte (whose order is code-point order) becomes the two hex digits of its complement,
    and ``~`` (above every hex digit) closes the key, so a shorter id that prefixes a longer one
    still sorts after it.
    """
    return "".join(f"{0xFF - b:02x}" for b in value.encode()) + "~"


def _check_key(value: str, what: str) -> str:
    if not value or any(c in _FORBIDDEN_KEY_CHARS or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError(f"{what} {value!r} cannot be used as a Table Storage key")
    return value


def _next_prefix(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _pack(record: BaseModel) -> dict[str, Any]:
    text = json.dumps(record.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
    chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
    if len(chunks) > _MAX_CHUNKS:
        raise ValueError(f"record {getattr(record, 'id', '?')} is too large for Table Storage")
    return {f"r{i}": chunk for i, chunk in enumerate(chunks)}


def _unpack(entity: Any, model: type[R]) -> R:
    text = "".join(entity[f"r{i}"] for i in range(_MAX_CHUNKS) if f"r{i}" in entity)
    return model.model_validate(json.loads(text))


def _metadata_property(key: str) -> str:
    # Property names must be identifiers; hex keeps every metadata key representable and distinct.
    name = "md_" + key.encode().hex()
    if len(name) > 255:
        raise ValueError(f"metadata key {key!r} is too long")
    return name


@storage_errors
class AzureTables:
    """The table clients of one deployment; tables are created if missing."""

    KINDS = ("files", "jobs", "events", "keys", "unfinished")

    def __init__(self, account: StorageAccount, prefix: str = "tuneplane") -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha() or len(prefix) > 50:
            raise ValueError(f"table prefix {prefix!r} must be letters and digits, starting with a letter")
        self._setting = account.credential_setting
        service = account.table_service()
        self.prefix = prefix
        self._clients: dict[str, Any] = {}
        for kind in self.KINDS:
            self._clients[kind] = service.create_table_if_not_exists(f"{prefix}{kind}")

    def __getitem__(self, kind: str) -> Any:
        return self._clients[kind]


def _get(table: Any, partition: str, row: str) -> Any | None:
    from azure.core.exceptions import ResourceNotFoundError

    if len(row) > 1000:  # longer than any key we write; the service would answer 400
        return None
    try:
        return table.get_entity(partition, row)
    except ResourceNotFoundError:
        return None


def _page(table: Any, query: str, parameters: dict[str, Any], limit: int) -> list[Any]:
    # results_per_page bounds each round trip; islice stops paging as soon as the page is full.
    limit = max(0, int(limit))
    if limit == 0:
        return []
    items = table.query_entities(query, parameters=parameters, results_per_page=min(limit, 1000))
    return list(islice(items, limit))


def _range_query(prefix: str, after_key: str | None) -> tuple[str, dict[str, Any]]:
    lower_op = "gt" if after_key is not None else "ge"
    lower = prefix + after_key if after_key is not None else prefix
    query = f"PartitionKey eq @pk and RowKey {lower_op} @lo and RowKey lt @hi"
    return query, {"lo": lower, "hi": _next_prefix(prefix)}


def _is_conflict(error: Exception) -> bool:
    return getattr(error, "status_code", None) == 409 or "AlreadyExists" in str(getattr(error, "error_code", ""))


@storage_errors
class AzureFileStore:
    def __init__(self, tables: AzureTables) -> None:
        self._setting = tables._setting
        self._table = tables["files"]

    def create_file(self, record: FileRecord) -> None:
        from azure.core.exceptions import HttpResponseError

        base = {"PartitionKey": _check_key(record.project, "project"), "purpose": record.purpose, **_pack(record)}
        rows = [
            ("create", {**base, "RowKey": "d:" + desc(record.id)}),
            ("create", {**base, "RowKey": "a:" + _check_key(record.id, "file id")}),
        ]
        try:
            self._table.submit_transaction(rows)
        except HttpResponseError as error:
            if _is_conflict(error):
                raise AlreadyExists(f"file {record.id} already exists") from error
            raise

    def get_file(self, project: str, file_id: str) -> FileRecord | None:
        entity = _get(self._table, _check_key(project, "project"), "d:" + desc(file_id))
        return _unpack(entity, FileRecord) if entity is not None else None

    def list_files(
        self,
        project: str,
        *,
        purpose: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> list[FileRecord]:
        if order == "asc":
            query, params = _range_query("a:", after)
        else:
            query, params = _range_query("d:", desc(after) if after is not None else None)
        params["pk"] = _check_key(project, "project")
        if purpose is not None:
            query += " and purpose eq @purpose"
            params["purpose"] = purpose
        return [_unpack(e, FileRecord) for e in _page(self._table, query, params, limit)]

    def delete_file(self, project: str, file_id: str) -> bool:
        from azure.core.exceptions import HttpResponseError

        entity = _get(self._table, _check_key(project, "project"), "d:" + desc(file_id))
        if entity is None:
            return False
        rows = [
            ("delete", {"PartitionKey": project, "RowKey": "d:" + desc(file_id)}),
            ("delete", {"PartitionKey": project, "RowKey": "a:" + file_id}),
        ]
        try:
            self._table.submit_transaction(rows)
        except HttpResponseError as error:
            if error.status_code == 404:
                return False  # deleted concurrently
            raise
        return True


@storage_errors
class AzureJobStore:
    def __init__(self, tables: AzureTables, *, orphan_grace_s: int = 3600) -> None:
        self._setting = tables._setting
        self._jobs = tables["jobs"]
        self._events = tables["events"]
        self._unfinished = tables["unfinished"]
        self._orphan_grace_s = orphan_grace_s

    # -- jobs --------------------------------------------------------------------------------
    @staticmethod
    def _job_entity(record: JobRecord) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": _check_key(record.project, "project"),
            "RowKey": "j:" + desc(record.id),
            "status": record.status,
            "created_at": record.created_at,
            **_pack(record),
        }
        for key, value in (record.metadata or {}).items():
            entity[_metadata_property(key)] = value
        return entity

    @staticmethod
    def _idempotency_row(key: str) -> str:
        return "k:" + hashlib.sha256(key.encode()).hexdigest()

    def _mark_unfinished(self, record: JobRecord) -> None:
        self._unfinished.upsert_entity(
            {"PartitionKey": "unfinished", "RowKey": _check_key(record.id, "job id"), "project": record.project}
        )

    def _clear_unfinished(self, job_id: str) -> None:
        self._unfinished.delete_entity("unfinished", job_id)  # no error if already gone

    def _replay(self, project: str, idempotency_key: str) -> JobRecord | None:
        entity = _get(self._jobs, project, self._idempotency_row(idempotency_key))
        return self.get_job(project, entity["job_id"]) if entity is not None else None

    def create_job(self, record: JobRecord, *, idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        from azure.core.exceptions import HttpResponseError

        project = _check_key(record.project, "project")
        if idempotency_key is not None:
            first = self._replay(project, idempotency_key)
            if first is not None:
                return first, False
        rows: list[tuple[str, dict[str, Any]]] = [("create", self._job_entity(record))]
        if idempotency_key is not None:
            rows.append(
                ("create", {"PartitionKey": project, "RowKey": self._idempotency_row(idempotency_key), "job_id": record.id})
            )
        if record.status not in TERMINAL_STATUSES:
            self._mark_unfinished(record)  # before the job: a crash may leave a hint, never lose a job
        try:
            self._jobs.submit_transaction(rows)
        except HttpResponseError as error:
            if not _is_conflict(error):
                raise
            self._clear_unfinished(record.id)
            if idempotency_key is not None:
                first = self._replay(project, idempotency_key)
                if first is not None:  # a concurrent request with the same key won the race
                    return first, False
            raise AlreadyExists(f"job {record.id} already exists") from error
        return record, True

    def get_job(self, project: str, job_id: str) -> JobRecord | None:
        entity = _get(self._jobs, _check_key(project, "project"), "j:" + desc(job_id))
        return _unpack(entity, JobRecord) if entity is not None else None

    def list_jobs(
        self,
        project: str,
        *,
        limit: int = 20,
        after: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[JobRecord]:
        query, params = _range_query("j:", desc(after) if after is not None else None)
        params["pk"] = _check_key(project, "project")
        for i, (key, value) in enumerate(sorted((metadata or {}).items())):
            query += f" and {_metadata_property(key)} eq @m{i}"
            params[f"m{i}"] = value
        return [_unpack(e, JobRecord) for e in _page(self._jobs, query, params, limit)]

    def update_job(self, record: JobRecord) -> JobRecord:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        project = _check_key(record.project, "project")
        entity = _get(self._jobs, project, "j:" + desc(record.id))
        if entity is None:
            raise NotFound(f"job {record.id} not found")
        stored = _unpack(entity, JobRecord)
        if stored.version != record.version:
            raise Conflict(f"job {record.id} is at version {stored.version}, not {record.version}")
        updated = record.model_copy(update={"version": record.version + 1})
        try:
            self._jobs.update_entity(
                self._job_entity(updated),
                mode=UpdateMode.REPLACE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError as error:
            raise Conflict(f"job {record.id} was updated concurrently") from error
        except HttpResponseError as error:
            if error.status_code == 412:
                raise Conflict(f"job {record.id} was updated concurrently") from error
            if error.status_code == 404:
                raise NotFound(f"job {record.id} not found") from error
            raise
        if updated.status in TERMINAL_STATUSES:
            self._clear_unfinished(updated.id)
        return updated

    def list_unfinished_jobs(self) -> list[JobRecord]:
        now = datetime.now(timezone.utc)
        jobs: list[JobRecord] = []
        for hint in self._unfinished.query_entities("PartitionKey eq 'unfinished'"):
            job = self.get_job(hint["project"], hint["RowKey"])
            if job is None:
                written = hint.metadata.get("timestamp")
                if written is not None and (now - written).total_seconds() > self._orphan_grace_s:
                    self._clear_unfinished(hint["RowKey"])  # the job's creation never committed
                continue
            if job.status in TERMINAL_STATUSES:
                self._clear_unfinished(job.id)
                continue
            jobs.append(job)
        jobs.sort(key=lambda j: (j.created_at, j.id))
        return jobs

    # -- events and checkpoints -------------------------------------------------------------
    @staticmethod
    def _partition(project: str, job_id: str) -> str:
        return _check_key(project, "project") + ":" + _check_key(job_id, "job id")

    def _insert(self, partition: str, row: str, record: BaseModel) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._events.create_entity({"PartitionKey": partition, "RowKey": row, **_pack(record)})
        except ResourceExistsError:
            return False
        return True

    def append_event(self, project: str, event: EventRecord) -> bool:
        return self._insert(self._partition(project, event.job_id), "e:" + desc(event.id), event)

    def list_events(self, project: str, job_id: str, *, limit: int = 20, after: str | None = None) -> list[EventRecord]:
        query, params = _range_query("e:", desc(after) if after is not None else None)
        params["pk"] = self._partition(project, job_id)
        return [_unpack(e, EventRecord) for e in _page(self._events, query, params, limit)]

    def put_checkpoint(self, project: str, checkpoint: CheckpointRecord) -> bool:
        return self._insert(self._partition(project, checkpoint.job_id), "c:" + desc(checkpoint.id), checkpoint)

    def list_checkpoints(
        self, project: str, job_id: str, *, limit: int = 10, after: str | None = None
    ) -> list[CheckpointRecord]:
        query, params = _range_query("c:", desc(after) if after is not None else None)
        params["pk"] = self._partition(project, job_id)
        return [_unpack(e, CheckpointRecord) for e in _page(self._events, query, params, limit)]
