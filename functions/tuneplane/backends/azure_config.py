"""Settings of the Azure backend (``TUNEPLANE_AZURE_*``) and the clients built from them.

Every setting is documented in the field's description (the README's table is generated from the
same text). A missing or wrong setting surfaces as ``BackendMisconfigured`` naming the variable,
which the API answers with a 503; it never reaches a user as a traceback.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneplane.ports import BackendMisconfigured

ENV_PREFIX = "TUNEPLANE_AZURE_"


class AzureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    subscription_id: str | None = Field(None, description="Subscription of the Azure ML workspace.")
    resource_group: str | None = Field(None, description="Resource group of the Azure ML workspace.")
    workspace: str | None = Field(None, description="Azure ML workspace name.")
    client_id: str | None = Field(
        None, description="Client id of a user-assigned managed identity (DefaultAzureCredential picks it)."
    )
    storage_connection_string: str | None = Field(
        None, description="Storage connection string (Azurite, or key auth). If unset, the URLs and the identity are used."
    )
    table_url: str | None = Field(None, description="Table service URL, e.g. https://ACCOUNT.table.core.windows.net.")
    blob_url: str | None = Field(None, description="Blob service URL, e.g. https://ACCOUNT.blob.core.windows.net.")
    table_prefix: str = Field("tuneplane", description="Prefix of the Table Storage tables (letters and digits).")
    files_container: str = Field(
        "tuneplane-files", description="Blob container for file contents, job inputs and outputs (infra creates it)."
    )
    datastore: str = Field(
        "tuneplanefiles", description="Name of the Azure ML datastore registered on the files container."
    )
    experiment: str = Field("tuneplane", description="Azure ML experiment that groups the training jobs.")
    environment: str | None = Field(
        None, description="Registered environment for jobs and deployments (azureml:NAME:VERSION); default: build training/environment."
    )
    training_dir: str | None = Field(
        None, description="Path of the training/ folder uploaded as the jobs' code (a relative path is resolved against the "
        "folder that holds the tuneplane package: `training` in a package built by scripts/publish-functions), or a "
        "registered code asset azureml:NAME:VERSION; default: the repository's."
    )
    training_data_container: str | None = Field(
        None, description="Blob container whose BlobCreated events reach the Function App; if set, retraining policies must watch it."
    )
    cpu_cluster: str | None = Field(None, description="Compute cluster that a job's `compute: \"cpu\"` runs on.")
    gpu_cluster: str | None = Field(None, description="Compute cluster that a job's `compute: \"gpu\"` runs on.")
    serverless_tier: Literal["standard", "spot"] = Field("standard", description="Queue tier of serverless jobs.")
    job_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="Azure ML limit on a job's run time.")
    endpoint: str | None = Field(None, description="Managed online endpoint (owned by Pulumi) that deployments join.")
    endpoint_auth_mode: Literal["aad_token", "key", "aml_token"] = Field(
        "aad_token", description="How the control plane calls the endpoint: an Entra token, the endpoint key, or an Azure ML token."
    )
    endpoint_key: str | None = Field(None, description="Endpoint key, if endpoint_auth_mode=key (else it is fetched).")
    deployment_instance_type: str = Field(
        "Standard_NC24ads_A100_v4", description="VM size of each per-base-model online deployment."
    )
    deployment_instance_count: int = Field(1, ge=1, description="Instances per online deployment.")
    price_table: str | None = Field(
        None, description="JSON object of instance types to {gpus, gpu_memory_gb, tflops_bf16, price_per_hour, spot_price_per_hour}."
    )
    retry_budget_s: float = Field(30.0, ge=0, description="Total time transient Azure errors are retried within one call.")

    @field_validator("endpoint_auth_mode", mode="before")
    @classmethod
    def _arm_auth_mode(cls, value: Any) -> Any:
        # The endpoint's own spelling (AADToken, Key, AMLToken) is accepted too.
        return {"aadtoken": "aad_token", "amltoken": "aml_token"}.get(str(value).lower(), str(value).lower())

    def cluster_for(self, compute: str) -> str:
        """The compute cluster a job's ``compute`` names: the aliases cpu and gpu map to the
        configured clusters; any other name is a cluster name already."""
        aliases = {"cpu": self.cpu_cluster, "gpu": self.gpu_cluster}
        return aliases.get(compute) or compute

    def require(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name):
                raise BackendMisconfigured(
                    ENV_PREFIX + name.upper(), f"{ENV_PREFIX}{name.upper()} is not set; the Azure backend needs it."
                )

    def storage_account(self) -> Any:
        from tuneplane.stores.azure_account import StorageAccount

        if not self.storage_connection_string:
            if not self.table_url:
                self.require("storage_connection_string", "table_url")
            self.require("blob_url")
        return StorageAccount(
            connection_string=self.storage_connection_string,
            table_url=self.table_url,
            blob_url=self.blob_url,
            managed_identity_client_id=self.client_id,
        )

    def instance_types(self) -> Any:
        from tuneplane.domain.estimate import DEFAULT_INSTANCE_TYPES, EstimateError, parse_price_table

        if not self.price_table:
            return DEFAULT_INSTANCE_TYPES
        try:
            data = json.loads(self.price_table)
            if not isinstance(data, dict):
                raise EstimateError("price table: must be a JSON object")
            return parse_price_table(data)
        except (ValueError, EstimateError) as error:
            raise BackendMisconfigured(f"{ENV_PREFIX}PRICE_TABLE", f"{ENV_PREFIX}PRICE_TABLE: {error}") from error

    def credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        if self.client_id:
            return DefaultAzureCredential(managed_identity_client_id=self.client_id)
        return DefaultAzureCredential()

    def ml_client(self) -> Any:
        """The workspace's MLClient. Building it makes no network call; the first operation does."""
        self.require("subscription_id", "resource_group", "workspace")
        from azure.ai.ml import MLClient

        return MLClient(
            credential=self.credential(),
            subscription_id=self.subscription_id,
            resource_group_name=self.resource_group,
            workspace_name=self.workspace,
        )
