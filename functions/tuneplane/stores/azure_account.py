"""How the Azure storage adapters authenticate.

Two ways, chosen by what is configured:
- a connection string (Azurite locally and in tests, or an account key if an operator insists);
- service URLs plus ``DefaultAzureCredential``, which in Azure picks up the Function App's managed
  identity (``managed_identity_client_id`` selects a user-assigned one).

The azure SDKs are imported inside the functions so that importing tuneplane stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StorageAccount:
    connection_string: str | None = None
    table_url: str | None = None
    blob_url: str | None = None
    managed_identity_client_id: str | None = None

    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        if self.managed_identity_client_id:
            return DefaultAzureCredential(managed_identity_client_id=self.managed_identity_client_id)
        return DefaultAzureCredential()

    def table_service(self) -> Any:
        from azure.data.tables import TableServiceClient

        if self.connection_string:
            return TableServiceClient.from_connection_string(self.connection_string)
        if not self.table_url:
            raise ValueError("TUNEPLANE_AZURE_TABLE_URL or TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING is required")
        return TableServiceClient(endpoint=self.table_url, credential=self._credential())

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string)
        if not self.blob_url:
            raise ValueError("TUNEPLANE_AZURE_BLOB_URL or TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING is required")
        return BlobServiceClient(account_url=self.blob_url, credential=self._credential())
