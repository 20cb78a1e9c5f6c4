"""The Azure side of the wiring (``TUNEPLANE_BACKEND=azure``): Table and Blob stores, and the
Azure ML training backend, registry and deployer for the reconciler.

Settings are the ``TUNEPLANE_AZURE_*`` variables of ``tuneplane.backends.azure_config``. Nothing
here talks to Azure when it is built except the stores, which create their tables and container
if missing; the MLClient makes its first call on the reconciler's first pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from tuneplane.backends.azure_config import AzureSettings


def build_azure_adapters(settings: Any, azure: AzureSettings | None = None) -> Any:
    """The stores on Table Storage and Blob Storage (``settings`` is tuneplane.settings.Settings)."""
    from tuneplane.stores.azure_blob import AzureBlobContentStore
    from tuneplane.stores.azure_keys import AzureKeyStore
    from tuneplane.stores.azure_tables import AzureFileStore, AzureJobStore, AzureTables
    from tuneplane.wiring import Adapters

    from tuneplane.ports import BackendMisconfigured

    azure = azure or AzureSettings()
    if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", azure.files_container):
        raise BackendMisconfigured("TUNEPLANE_AZURE_FILES_CONTAINER", "TUNEPLANE_AZURE_FILES_CONTAINER must be a blob "
                                   f"container name (3-63 lowercase letters, digits, single hyphens), not {azure.files_container!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,49}", azure.table_prefix):
        raise BackendMisconfigured("TUNEPLANE_AZURE_TABLE_PREFIX", "TUNEPLANE_AZURE_TABLE_PREFIX must be letters and "
                                   f"digits starting with a letter (at most 50), not {azure.table_prefix!r}")
    account = azure.storage_account()
    tables = AzureTables(account, azure.table_prefix)
    return Adapters(
        files=AzureFileStore(tables),
        jobs=AzureJobStore(tables),
        keys=AzureKeyStore(tables),
        contents=AzureBlobContentStore(account, azure.files_container),
    )


class EveryCompute(Mapping):
    """The reconciler's ``backends`` by compute name: on Azure one backend serves them all
    ("serverless", any cluster name, and "local", which means "choose for me" there)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getitem__(self, compute: str) -> Any:
        return self._backend

    def get(self, compute: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._backend

    def __iter__(self) -> Iterator[str]:
        return iter(["serverless"])

    def __len__(self) -> int:
        return 1


class LazyMLClient:
    """The workspace's MLClient, built on first use: the API starts (and answers everything but
    deployments and chat) even when the Azure ML settings are missing; the first deployment call
    then fails with BackendMisconfigured naming the setting (a 503)."""

    def __init__(self, azure: AzureSettings) -> None:
        self._azure = azure
        self._client: Any = None

    def resolve(self) -> Any:
        if self._client is None:
            self._client = self._azure.ml_client()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)


class AzureML:
    """One MLClient, model registry and deployer per control plane: the API's deployments and chat
    and the reconciler's context share them (see ``azure_ml_of``)."""

    def __init__(self, azure: AzureSettings, contents: Any, ml_client: Any = None, *, retry: Any = None,
                 token_provider: Any = None) -> None:
        from tuneplane.backends.azure_ml_deploy import AzureDeployer, AzureModelRegistry

        self.azure = azure
        self.ml = ml_client if ml_client is not None else LazyMLClient(azure)
        self.registry = AzureModelRegistry(self.ml, azure, retry=retry)
        self.deployer = AzureDeployer(self.ml, contents, azure, retry=retry, token_provider=token_provider)


def azure_ml_of(adapters: Any, azure: AzureSettings | None = None, ml_client: Any = None) -> AzureML:
    """The AzureML bundle kept on ``adapters`` (built on the first call; later calls share it)."""
    if getattr(adapters, "azure_ml", None) is None:
        adapters.azure_ml = AzureML(azure or AzureSettings(), adapters.contents, ml_client)
    return adapters.azure_ml


def build_azure_context(settings: Any, adapters: Any, azure: AzureSettings | None = None, ml_client: Any = None) -> Any:
    """The reconciler's context on Azure (the timer trigger and ``tuneplane serve`` with the
    Azure backend both use it). ``ml_client`` is for tests, which pass a mocked one. It deploys
    through the same AzureDeployer as the API's /deployments and chat (``azure_ml_of``)."""
    from tuneplane.backends.azure_ml import AzureTrainingBackend
    from tuneplane.reconciler import ReconcileContext

    shared = getattr(adapters, "azure_ml", None)
    if shared is None or (ml_client is not None and shared.ml is not ml_client) or (azure is not None and shared.azure is not azure):
        shared = AzureML(azure or AzureSettings(), adapters.contents, ml_client)
        adapters.azure_ml = shared
    if isinstance(shared.ml, LazyMLClient):
        shared.ml.resolve()  # the timer trigger reports a missing workspace setting now, as before
    azure = shared.azure
    backend = AzureTrainingBackend(shared.ml, adapters.contents, azure)
    return ReconcileContext(
        jobs=adapters.jobs,
        files=adapters.files,
        contents=adapters.contents,
        backends=EveryCompute(backend),
        registry=shared.registry,
        deployer=shared.deployer if azure.endpoint else None,
        checkpoint_every_n_steps=getattr(settings, "checkpoint_every_n_steps", None),
    )
