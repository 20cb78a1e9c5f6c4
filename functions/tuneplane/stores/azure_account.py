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

    @property
    def credential_setting(self) -> str:
        """The setting to fix when storage refuses the credential."""
        return "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING" if self.connection_string else "TUNEPLANE_AZURE_CLIENT_ID"

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


def storage_errors(cls: type) -> type:
    """Class decorator: a refused credential becomes BackendMisconfigured naming the setting, and an
    unreachable account becomes BackendUnavailable, so the API answers 503 instead of a traceback.
    The class keeps the account's ``credential_setting`` in ``self._setting``."""
    import functools

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

            from tuneplane.ports import BackendMisconfigured, BackendUnavailable

            setting = getattr(self, "_setting", "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING")
            try:
                return fn(self, *args, **kwargs)
            except ClientAuthenticationError as error:
                raise BackendMisconfigured(setting, f"Azure Storage refused the credential ({setting}): {_first_line(error)}") from error
            except ServiceRequestError as error:
                raise BackendUnavailable("storage_unavailable", f"Azure Storage is unreachable: {_first_line(error)}") from error
            except HttpResponseError as error:
                if error.status_code == 403:
                    raise BackendMisconfigured(setting, f"Azure Storage refused access ({setting}): {_first_line(error)}") from error
                raise

        return call

    for name, member in list(vars(cls).items()):
        if callable(member) and (not name.startswith("_") or name == "__init__"):
            setattr(cls, name, wrap(member))
    return cls


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
