"""The PolicyStore (tuneplane.retraining) on Azure Table Storage, in one table ``{prefix}policies``.

| PartitionKey          | RowKey                  | holds                                            |
|-----------------------|-------------------------|--------------------------------------------------|
| project               | ``p:`` + desc(id)       | the policy record (newest first, as lists want)  |
| project               | ``n:`` + name           | the policy id: makes names unique per project    |
| ``triggers``          | trigger key (sha256)    | the exactly-once ledger entry of (policy, blob)  |
| ``ev:`` project:id    | ``e:`` + desc(event id) | the policy's events                              |

A policy and its name row are written in one entity-group transaction, so a name is taken exactly
when its policy exists. Updates are compare-and-swap on ``version`` and the entity's ETag (412 ->
Conflict), and a trigger claim is an insert that only the first writer wins (409 -> read theirs).
"""

from __future__ import annotations

from typing import Any

from tuneplane.domain.policies import PolicyEventRecord, PolicyRecord, TriggerRecord
from tuneplane.ports import AlreadyExists, Conflict, NotFound
from tuneplane.stores.azure_account import StorageAccount, storage_errors
from tuneplane.stores.azure_tables import _check_key, _get, _is_conflict, _pack, _page, _range_query, _unpack, desc

TRIGGERS = "triggers"


@storage_errors
class AzurePolicyStore:
    def __init__(self, account: StorageAccount, prefix: str = "tuneplane") -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha() or len(prefix) > 50:
            raise ValueError(f"table prefix {prefix!r} must be letters and digits, starting with a letter")
        self._setting = account.credential_setting
        self._table = account.table_service().create_table_if_not_exists(f"{prefix}policies")

    @classmethod
    def from_settings(cls, azure: Any = None) -> "AzurePolicyStore":
        from tuneplane.backends.azure_config import AzureSettings

        azure = azure or AzureSettings()
        return cls(azure.storage_account(), azure.table_prefix)

    # -- policies -------------------------------------------------------------------------------

    def create_policy(self, record: PolicyRecord) -> None:
        from azure.core.exceptions import HttpResponseError

        project = _check_key(record.project, "project")
        rows = [
            ("create", {"PartitionKey": project, "RowKey": "p:" + desc(record.id), **_pack(record)}),
            ("create", {"PartitionKey": project, "RowKey": "n:" + _check_key(record.name, "name"), "policy_id": record.id}),
        ]
        try:
            self._table.submit_transaction(rows)
        except HttpResponseError as error:
            if _is_conflict(error):
                raise AlreadyExists(record.name) from error
            raise

    def get_policy(self, project: str, policy_id: str) -> PolicyRecord | None:
        entity = _get(self._table, _check_key(project, "project"), "p:" + desc(policy_id))
        return _unpack(entity, PolicyRecord) if entity is not None else None

    def find_policy(self, project: str, name: str) -> PolicyRecord | None:
        try:
            row = _get(self._table, _check_key(project, "project"), "n:" + _check_key(name, "name"))
        except ValueError:
            return None
        return self.get_policy(project, row["policy_id"]) if row is not None else None

    def list_policies(self, project: str, *, limit: int = 20, after: str | None = None) -> list[PolicyRecord]:
        query, params = _range_query("p:", desc(after) if after is not None else None)
        params["pk"] = _check_key(project, "project")
        return [_unpack(e, PolicyRecord) for e in _page(self._table, query, params, limit)]

    def all_policies(self) -> list[PolicyRecord]:
        # A scan across projects; the handler needs it per event, and policies are few.
        entities = self._table.query_entities("RowKey ge @lo and RowKey lt @hi", parameters={"lo": "p:", "hi": "p;"})
        return sorted((_unpack(e, PolicyRecord) for e in entities), key=lambda p: p.id)

    def update_policy(self, record: PolicyRecord) -> PolicyRecord:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        project = _check_key(record.project, "project")
        entity = _get(self._table, project, "p:" + desc(record.id))
        if entity is None:
            raise NotFound(record.id)
        if _unpack(entity, PolicyRecord).version != record.version:
            raise Conflict(record.id)
        stored = record.model_copy(update={"version": record.version + 1})
        try:
            self._table.update_entity({"PartitionKey": project, "RowKey": "p:" + desc(record.id), **_pack(stored)},
                                      mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError as error:
            raise Conflict(record.id) from error
        except HttpResponseError as error:
            if error.status_code == 412:
                raise Conflict(record.id) from error
            if error.status_code == 404:
                raise NotFound(record.id) from error
            raise
        return stored

    def delete_policy(self, project: str, policy_id: str) -> bool:
        from azure.core.exceptions import HttpResponseError

        record = self.get_policy(project, policy_id)
        if record is None:
            return False
        try:
            self._table.submit_transaction([
                ("delete", {"PartitionKey": record.project, "RowKey": "p:" + desc(record.id)}),
                ("delete", {"PartitionKey": record.project, "RowKey": "n:" + record.name}),
            ])
        except HttpResponseError as error:
            if error.status_code == 404:  # deleted concurrently
                return False
            raise
        partition = self._events_partition(project, policy_id)
        for entity in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}):
            self._table.delete_entity(partition, entity["RowKey"])
        return True

    # -- triggers (the exactly-once ledger) -------------------------------------------------------

    def get_trigger(self, key: str) -> TriggerRecord | None:
        entity = _get(self._table, TRIGGERS, _check_key(key, "trigger key"))
        return _unpack(entity, TriggerRecord) if entity is not None else None

    def claim_trigger(self, record: TriggerRecord) -> TriggerRecord:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._table.create_entity({"PartitionKey": TRIGGERS, "RowKey": _check_key(record.key, "trigger key"), **_pack(record)})
            return record
        except ResourceExistsError:
            existing = self.get_trigger(record.key)
            if existing is None:  # removed in between; nobody else holds it now
                return self.claim_trigger(record)
            return existing

    def put_trigger(self, record: TriggerRecord) -> None:
        from azure.data.tables import UpdateMode

        self._table.upsert_entity({"PartitionKey": TRIGGERS, "RowKey": _check_key(record.key, "trigger key"), **_pack(record)},
                                  mode=UpdateMode.REPLACE)

    # -- events ---------------------------------------------------------------------------------

    @staticmethod
    def _events_partition(project: str, policy_id: str) -> str:
        return f"ev:{_check_key(project, 'project')}:{_check_key(policy_id, 'policy id')}"

    def append_policy_event(self, project: str, event: PolicyEventRecord) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._table.create_entity({"PartitionKey": self._events_partition(project, event.policy_id),
                                       "RowKey": "e:" + desc(event.id), **_pack(event)})
            return True
        except ResourceExistsError:
            return False

    def list_policy_events(
        self, project: str, policy_id: str, *, limit: int = 20, after: str | None = None
    ) -> list[PolicyEventRecord]:
        query, params = _range_query("e:", desc(after) if after is not None else None)
        params["pk"] = self._events_partition(project, policy_id)
        return [_unpack(e, PolicyEventRecord) for e in _page(self._table, query, params, limit)]
