"""The webhook store (endpoints and the delivery outbox of ``tuneplane.webhooks``) on Azure Table
Storage, in one table ``{prefix}webhooks``: on a Function App, TUNEPLANE_HOME is ephemeral, so the
SQLite ``WebhookStore`` would lose endpoints and queued events on every restart.

| PartitionKey     | RowKey                        | holds                                   |
|------------------|-------------------------------|-----------------------------------------|
| ``ep:`` project  | desc(endpoint id)             | an endpoint (newest first, as lists want)|
| ``deliveries``   | endpoint id ``:`` event id    | one delivery of one event to one endpoint|

Each row keeps its fields as JSON in ``data`` (so values read back exactly as written, whatever
their size); a delivery also carries ``status``, ``next_attempt_at``, ``project`` and
``endpoint_id`` as columns, which the service filters on. Recording an event is an insert that
only the first writer wins, so ``record_event`` stays idempotent across processes. The methods and
the dicts they return are exactly those of ``tuneplane.webhooks.WebhookStore``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tuneplane.domain.ids import new_id
from tuneplane.domain.records import JobRecord
from tuneplane.stores.azure_account import StorageAccount, storage_errors
from tuneplane.stores.azure_tables import _check_key, _get, _is_conflict, _page, desc
from tuneplane.webhooks import new_secret, terminal_event

DELIVERIES = "deliveries"
_DELIVERY_FIELDS = ("endpoint_id", "event_id", "project", "job_id", "event_type", "payload", "status", "attempts",
                    "next_attempt_at", "last_status_code", "last_error", "created_at", "delivered_at")


def _pk(project: str) -> str:
    return "ep:" + _check_key(project, "project")


def _data(entity: Any) -> dict[str, Any]:
    return json.loads(entity["data"])


@storage_errors
class AzureWebhookStore:
    def __init__(self, account: StorageAccount, prefix: str = "tuneplane") -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha() or len(prefix) > 50:
            raise ValueError(f"table prefix {prefix!r} must be letters and digits, starting with a letter")
        self._setting = account.credential_setting
        self._table = account.table_service().create_table_if_not_exists(f"{prefix}webhooks")

    @classmethod
    def from_settings(cls, azure: Any = None) -> "AzureWebhookStore":
        from tuneplane.backends.azure_config import AzureSettings

        azure = azure or AzureSettings()
        return cls(azure.storage_account(), azure.table_prefix)

    def close(self) -> None:
        self._table.close()

    # -- endpoints -----------------------------------------------------------------------------

    def _put_endpoint(self, data: dict[str, Any], *, create: bool) -> None:
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": _pk(data["project"]), "RowKey": desc(data["id"]),
                  "data": json.dumps(data, separators=(",", ":"))}
        if create:
            self._table.create_entity(entity)
        else:
            self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def create_endpoint(self, project: str, *, name: str, url: str, event_types: list[str]) -> dict[str, Any]:
        now = int(time.time())
        data = {"id": new_id("whep"), "project": project, "name": name, "url": url, "event_types": list(event_types),
                "secret": new_secret(), "created_at": now, "updated_at": now}
        self._put_endpoint(data, create=True)
        return data

    def get_endpoint(self, project: str, endpoint_id: str) -> dict[str, Any] | None:
        try:
            entity = _get(self._table, _pk(project), desc(endpoint_id))
        except ValueError:  # a project that cannot be a key has no endpoints
            return None
        return _data(entity) if entity is not None else None

    def list_endpoints(self, project: str, *, limit: int = 20, after: str | None = None) -> list[dict[str, Any]]:
        query, params = "PartitionKey eq @pk", {"pk": _pk(project)}
        if after:  # ids below ``after``: their desc() keys sort above its key
            query += " and RowKey gt @after"
            params["after"] = desc(after)
        return [_data(e) for e in _page(self._table, query, params, limit)]

    def update_endpoint(self, project: str, endpoint_id: str, **changes: Any) -> dict[str, Any] | None:
        current = self.get_endpoint(project, endpoint_id)
        if current is None:
            return None
        changes = {k: v for k, v in changes.items() if v is not None and current.get(k) != v}
        if not changes:
            return current
        values = {**current, **changes, "updated_at": int(time.time())}
        self._put_endpoint(values, create=False)
        return values

    def delete_endpoint(self, project: str, endpoint_id: str) -> bool:
        if self.get_endpoint(project, endpoint_id) is None:
            return False
        self._table.delete_entity(_pk(project), desc(endpoint_id))
        # Its pending deliveries go with it (as in SQLite); settled ones stay as history.
        pending = self._table.query_entities(
            "PartitionKey eq @pk and endpoint_id eq @ep and status eq 'pending'",
            parameters={"pk": DELIVERIES, "ep": endpoint_id}, select=["PartitionKey", "RowKey"])
        for entity in list(pending):
            self._table.delete_entity(entity["PartitionKey"], entity["RowKey"])
        return True

    # -- outbox --------------------------------------------------------------------------------

    def record_event(self, job: JobRecord) -> int:
        """Queue the job's terminal event for every subscribed endpoint; idempotent. Returns how many
        deliveries are new."""
        from azure.core.exceptions import HttpResponseError

        event_type, event_id, payload = terminal_event(job)
        now = time.time()
        added = 0
        for endpoint in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": _pk(job.project)}):
            endpoint = _data(endpoint)
            if event_type not in endpoint["event_types"]:
                continue
            delivery = {"endpoint_id": endpoint["id"], "event_id": event_id, "project": job.project, "job_id": job.id,
                        "event_type": event_type, "payload": payload, "status": "pending", "attempts": 0,
                        "next_attempt_at": now, "last_status_code": None, "last_error": None,
                        "created_at": int(now), "delivered_at": None}
            try:
                self._table.create_entity(self._delivery_entity(delivery))
            except HttpResponseError as error:
                if not _is_conflict(error):
                    raise
                continue  # recorded before (an earlier attempt at this write, or another process)
            added += 1
        return added

    @staticmethod
    def _delivery_entity(delivery: dict[str, Any]) -> dict[str, Any]:
        data = {k: delivery.get(k) for k in _DELIVERY_FIELDS}
        return {"PartitionKey": DELIVERIES, "RowKey": f"{data['endpoint_id']}:{data['event_id']}",
                "status": data["status"], "next_attempt_at": float(data["next_attempt_at"]),
                "project": data["project"], "endpoint_id": data["endpoint_id"],
                "data": json.dumps(data, separators=(",", ":"))}

    def _pending(self, now: float | None = None) -> list[dict[str, Any]]:
        query, params = "PartitionKey eq @pk and status eq 'pending'", {"pk": DELIVERIES}
        if now is not None:
            query += " and next_attempt_at le @now"
            params["now"] = float(now)
        return [_data(e) for e in self._table.query_entities(query, parameters=params)]

    def due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        rows = sorted(self._pending(now), key=lambda d: d["next_attempt_at"])
        due = []
        for delivery in rows:
            if len(due) >= limit:
                break
            endpoint = self.get_endpoint(delivery["project"], delivery["endpoint_id"])
            if endpoint is None:
                continue  # deleted between the two reads; its pending rows are going too
            due.append({**delivery, "url": endpoint["url"], "secret": endpoint["secret"]})
        return due

    def next_due_at(self) -> float | None:
        pending = self._pending()
        return min((d["next_attempt_at"] for d in pending), default=None)

    def deliveries(self, project: str, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        query, params = "PartitionKey eq @pk and project eq @project", {"pk": DELIVERIES, "project": project}
        if endpoint_id:
            query += " and endpoint_id eq @ep"
            params["ep"] = endpoint_id
        rows = [_data(e) for e in self._table.query_entities(query, parameters=params)]
        return sorted(rows, key=lambda d: (d["created_at"], d["event_id"]))

    def settle(self, delivery: dict[str, Any], **changes: Any) -> None:
        from azure.data.tables import UpdateMode

        entity = _get(self._table, DELIVERIES, f"{delivery['endpoint_id']}:{delivery['event_id']}")
        if entity is None:
            return  # its endpoint was deleted meanwhile: nothing left to settle (as an UPDATE of no row)
        self._table.upsert_entity(self._delivery_entity({**_data(entity), **changes}), mode=UpdateMode.REPLACE)
