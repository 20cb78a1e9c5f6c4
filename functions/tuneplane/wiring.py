"""Build the port adapters from settings: the one place that knows which backend is in use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneplane.ports import ContentStore, FileStore, JobStore, KeyStore
from tuneplane.settings import Settings


@dataclass
class Adapters:
    files: FileStore
    jobs: JobStore
    keys: KeyStore
    contents: ContentStore
    closer: Any = None  # called on shutdown to release connections
    policies: Any = None  # tuneplane.retraining.PolicyStore; built by build_policy_store when unset
    azure_ml: Any = None  # tuneplane.stores.azure.AzureML (Azure backend): the API and reconciler share it

    def close(self) -> None:
        if self.closer is not None:
            self.closer()


def build_adapters(settings: Settings) -> Adapters:
    if settings.backend == "local":
        from tuneplane.stores.localdir import LocalContentStore
        from tuneplane.stores.sqlite import SqliteDatabase, SqliteFileStore, SqliteJobStore, SqliteKeyStore

        db = SqliteDatabase(settings.database_path)
        return Adapters(
            files=SqliteFileStore(db),
            jobs=SqliteJobStore(db),
            keys=SqliteKeyStore(db),
            contents=LocalContentStore(settings.contents_dir),
            closer=db.close,
        )
    if settings.backend == "azure":
        # Imported lazily: the Azure SDKs load only when this backend is chosen.
        from tuneplane.stores.azure import build_azure_adapters

        return build_azure_adapters(settings)
    raise ValueError(f"unknown TUNEPLANE_BACKEND {settings.backend!r}")


def estimate_options(settings: Settings) -> dict[str, Any]:
    """The JobService's estimate inputs: on Azure, TUNEPLANE_AZURE_PRICE_TABLE and the serverless
    tier (a bad price table is BackendMisconfigured: the API answers 503 naming it); locally, the
    built-in list prices."""
    if settings.backend != "azure":
        return {}
    from tuneplane.backends.azure_config import AzureSettings

    azure = AzureSettings()
    return {"serverless_tier": azure.serverless_tier, "instance_types": azure.instance_types()}


def training_data_containers(settings: Settings) -> frozenset[str] | None:
    """The containers whose uploads reach the app (TUNEPLANE_AZURE_TRAINING_DATA_CONTAINER on Azure,
    where one Event Grid subscription watches one container); None: any container."""
    if settings.backend != "azure":
        return None
    from tuneplane.backends.azure_config import AzureSettings

    container = AzureSettings().training_data_container
    return frozenset({container}) if container else None


def build_policy_store(settings: Settings, adapters: Adapters) -> Any:
    """Retraining policies beside the other stores: SQLite locally, Table Storage on Azure."""
    if adapters.policies is None:
        if settings.backend == "azure":
            from tuneplane.stores.azure_policies import AzurePolicyStore

            adapters.policies = AzurePolicyStore.from_settings()
        else:
            from tuneplane.stores.sqlite import SqliteDatabase
            from tuneplane.stores.sqlite_policies import SqlitePolicyStore

            db = getattr(adapters.files, "db", None)
            adapters.policies = SqlitePolicyStore(db if isinstance(db, SqliteDatabase) else SqliteDatabase(settings.database_path))
    return adapters.policies


@dataclass
class Serving:
    """Deployments, the model registry they read, and webhooks (with their delivery thread)."""

    deployer: Any  # LocalDeployer, or on Azure tuneplane.backends.azure_ml_deploy.AzureDeployer
    registry: Any  # LocalModelRegistry, or on Azure AzureModelRegistry
    webhooks: Any  # tuneplane.webhooks.WebhookStore, or on Azure stores.azure_webhooks.AzureWebhookStore
    dispatcher: Any  # tuneplane.webhooks.WebhookDispatcher

    def start(self) -> None:
        # Only the local deployer owns processes to adopt and stop; Azure ML runs the deployments.
        if hasattr(self.deployer, "recover"):
            self.deployer.recover()
        self.dispatcher.start()

    def close(self) -> None:
        self.dispatcher.stop()
        if hasattr(self.deployer, "close"):
            self.deployer.close()
        self.webhooks.close()


def build_serving(settings: Settings, adapters: Adapters) -> Serving:
    """Also wraps ``adapters.jobs`` so that a job's terminal write queues its webhook event first;
    call it before anything else takes ``adapters.jobs``."""
    from tuneplane.webhooks import WebhookDispatcher, WebhookJobStore, WebhookStore

    if settings.backend == "azure":
        # TUNEPLANE_HOME is ephemeral on a Function App: webhooks live in Table Storage.
        from tuneplane.stores.azure_webhooks import AzureWebhookStore

        webhooks: Any = AzureWebhookStore.from_settings()
    else:
        webhooks = WebhookStore(settings.home / "webhooks.db")
    inner = adapters.jobs.inner if isinstance(adapters.jobs, WebhookJobStore) else adapters.jobs
    dispatcher = WebhookDispatcher(webhooks, inner, retry_base_seconds=settings.webhook_retry_base_seconds,
                                   max_attempts=settings.webhook_max_attempts)
    adapters.jobs = WebhookJobStore(inner, webhooks, on_event=dispatcher.nudge)
    if settings.backend == "azure":
        # The managed online endpoint serves; no local inference process (and no torch) here.
        from tuneplane.stores.azure import azure_ml_of

        azure_ml = azure_ml_of(adapters)
        return Serving(azure_ml.deployer, azure_ml.registry, webhooks, dispatcher)
    from tuneplane.backends.local_deployer import LocalDeployer
    from tuneplane.backends.local_registry import LocalModelRegistry

    deployer = LocalDeployer(settings.home / "deployments", device=settings.serving_device,
                             startup_timeout=settings.serving_startup_timeout)
    return Serving(deployer, LocalModelRegistry(settings.home / "registry"), webhooks, dispatcher)
