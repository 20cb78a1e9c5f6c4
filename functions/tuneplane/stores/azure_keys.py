"""KeyStore on Azure Table Storage: API keys in one partition of the ``keys`` table.

Each key is two rows written in one batch: ``id:{id}`` holds the record, ``hash:{sha256}`` points at
it, so ``find_key`` (on every request, behind the API's cache) is two point reads, and a half-written
key cannot exist. Revocation is a compare-and-swap on the record's ETag.
"""

from __future__ import annotations

import time
from typing import Any

from tuneplane.domain.records import ApiKeyRecord
from tuneplane.ports import AlreadyExists, Conflict
from tuneplane.stores.azure_account import storage_errors
from tuneplane.stores.azure_tables import AzureTables, _check_key, _get, _is_conflict, _pack, _range_query, _unpack


@storage_errors
class AzureKeyStore:
    _PARTITION = "keys"

    def __init__(self, tables: AzureTables) -> None:
        self._setting = tables._setting
        self._table = tables["keys"]

    def create_key(self, record: ApiKeyRecord) -> None:
        from azure.core.exceptions import HttpResponseError

        rows = [
            ("create", {"PartitionKey": self._PARTITION, "RowKey": "id:" + _check_key(record.id, "key id"),
                        "project": record.project, **_pack(record)}),
            ("create", {"PartitionKey": self._PARTITION, "RowKey": "hash:" + _check_key(record.key_hash, "key hash"),
                        "key_id": record.id}),
        ]
        try:
            self._table.submit_transaction(rows)
        except HttpResponseError as error:
            if _is_conflict(error):
                raise AlreadyExists(f"key {record.id} already exists") from error
            raise

    def _get_record(self, key_id: str) -> tuple[ApiKeyRecord, Any] | None:
        try:
            entity = _get(self._table, self._PARTITION, "id:" + _check_key(key_id, "key id"))
        except ValueError:
            return None
        return (_unpack(entity, ApiKeyRecord), entity) if entity is not None else None

    def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        try:
            index = _get(self._table, self._PARTITION, "hash:" + _check_key(key_hash, "key hash"))
        except ValueError:
            return None
        found = self._get_record(index["key_id"]) if index is not None else None
        if found is None or found[0].revoked_at is not None:
            return None
        return found[0]

    def list_keys(self, project: str | None = None) -> list[ApiKeyRecord]:
        query, params = _range_query("id:", None)
        params["pk"] = self._PARTITION
        if project is not None:
            query += " and project eq @project"
            params["project"] = project
        return [_unpack(e, ApiKeyRecord) for e in self._table.query_entities(query, parameters=params)]

    def revoke_key(self, key_id: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(5):  # a concurrent revoke changes the ETag; re-read and try again
            found = self._get_record(key_id)
            if found is None:
                return False
            record, entity = found
            if record.revoked_at is not None:
                return False  # already revoked: nothing changed
            revoked = record.model_copy(update={"revoked_at": int(time.time())})
            try:
                self._table.update_entity(
                    {"PartitionKey": self._PARTITION, "RowKey": entity["RowKey"], "project": revoked.project,
                     **_pack(revoked)},
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue
            return True
        raise Conflict(f"key {key_id} keeps changing")
