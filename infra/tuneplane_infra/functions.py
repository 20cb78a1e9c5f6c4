"""The Function App that serves tuneplane's OpenAI-compatible API (functions/function_app.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import web

from tuneplane_infra.storage import HardenedStorage

DEPLOYMENT_CONTAINER = "app-package"
PYTHON_VERSION = "3.11"
# scripts/publish-functions copies training/ into the package beside tuneplane/; the control plane
# resolves a relative TUNEPLANE_AZURE_TRAINING_DIR against that folder and uploads it as job code.
PACKAGED_TRAINING_DIR = "training"
# The endpoint's ARM auth mode (tuneplane:endpointAuthMode) in the control plane's spelling.
ENDPOINT_AUTH_MODES = {"AADToken": "aad_token", "Key": "key", "AMLToken": "aml_token"}
# The package folder is read-only on Flex Consumption; the control plane's scratch state (its
# default TUNEPLANE_HOME is relative to the working directory) goes to the writable /tmp.
CONTROL_PLANE_HOME = "/tmp/tuneplane"


@dataclass(frozen=True)
class ControlPlaneSettings:
    """What the control plane needs to find its Azure backends (its TUNEPLANE_* settings)."""

    subscription_id: pulumi.Input[str]
    resource_group_name: pulumi.Input[str]
    workspace_name: pulumi.Input[str]
    blob_url: pulumi.Input[str]
    table_url: pulumi.Input[str]
    files_container: str
    datastore_name: pulumi.Input[str]
    training_data_container: str
    cpu_cluster_name: pulumi.Input[str]
    gpu_cluster_name: pulumi.Input[str]
    endpoint_name: pulumi.Input[str]
    endpoint_auth_mode: str
    api_key: pulumi.Input[str] | None = None

    def app_settings(self) -> dict[str, pulumi.Input[str]]:
        settings: dict[str, pulumi.Input[str]] = {
            "TUNEPLANE_BACKEND": "azure",
            "TUNEPLANE_HOME": CONTROL_PLANE_HOME,
            "TUNEPLANE_AZURE_SUBSCRIPTION_ID": self.subscription_id,
            "TUNEPLANE_AZURE_RESOURCE_GROUP": self.resource_group_name,
            "TUNEPLANE_AZURE_WORKSPACE": self.workspace_name,
            "TUNEPLANE_AZURE_BLOB_URL": self.blob_url,
            "TUNEPLANE_AZURE_TABLE_URL": self.table_url,
            "TUNEPLANE_AZURE_FILES_CONTAINER": self.files_container,
            "TUNEPLANE_AZURE_DATASTORE": self.datastore_name,
            "TUNEPLANE_AZURE_TRAINING_DIR": PACKAGED_TRAINING_DIR,
            "TUNEPLANE_AZURE_TRAINING_DATA_CONTAINER": self.training_data_container,
            "TUNEPLANE_AZURE_CPU_CLUSTER": self.cpu_cluster_name,
            "TUNEPLANE_AZURE_GPU_CLUSTER": self.gpu_cluster_name,
            "TUNEPLANE_AZURE_ENDPOINT": self.endpoint_name,
            "TUNEPLANE_AZURE_ENDPOINT_AUTH_MODE": ENDPOINT_AUTH_MODES[self.endpoint_auth_mode],
        }
        if self.api_key is not None:
            settings["TUNEPLANE_API_KEY"] = pulumi.Output.secret(self.api_key)
        return settings


@dataclass(frozen=True)
class FunctionsArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    storage_sku: str
    max_instances: int
    instance_memory_mb: int
    insights_connection_string: pulumi.Input[str]
    control_plane: ControlPlaneSettings
    tags: Mapping[str, str] = field(default_factory=dict)


class Functions(pulumi.ComponentResource):
    """Outputs: function_app_name, function_app_id, principal_id, api_base_url, and the host
    storage account with its deployment container."""

    def __init__(self, name: str, args: FunctionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Functions", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = args.resource_group_name
        tags = dict(args.tags)

        # The host's own account (leases, timers, the deployment package) is kept apart from the
        # data account so that the app's bookkeeping never mixes with customer data.
        self.host_storage = HardenedStorage(
            "tpfunc",
            resource_group_name=rg,
            location=args.location,
            sku=args.storage_sku,
            containers=[DEPLOYMENT_CONTAINER],
            tags=tags,
            parent=self,
        )
        self.plan = web.AppServicePlan(
            f"{name}-plan",
            resource_group_name=rg,
            location=args.location,
            kind="functionapp",
            sku={"name": "FC1", "tier": "FlexConsumption"},
            reserved=True,  # Linux
            tags=tags,
            opts=child,
        )
        settings: dict[str, pulumi.Input[str]] = {
            # Identity-based host storage: the app's system identity, no connection string.
            "AzureWebJobsStorage__accountName": self.host_storage.account.name,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": args.insights_connection_string,
            **args.control_plane.app_settings(),
        }
        self.app = web.WebApp(
            f"{name}-app",
            resource_group_name=rg,
            location=args.location,
            kind="functionapp,linux",
            server_farm_id=self.plan.id,
            identity={"type": "SystemAssigned"},
            https_only=True,
            client_affinity_enabled=False,
            public_network_access="Enabled",
            function_app_config={
                "deployment": {
                    "storage": {
                        "type": "blobContainer",
                        "value": pulumi.Output.concat(self.host_storage.blob_endpoint, DEPLOYMENT_CONTAINER),
                        "authentication": {"type": "SystemAssignedIdentity"},
                    }
                },
                "runtime": {"name": "python", "version": PYTHON_VERSION},
                "scale_and_concurrency": {
                    "maximum_instance_count": args.max_instances,
                    "instance_memory_mb": args.instance_memory_mb,
                },
            },
            site_config={
                "min_tls_version": "1.2",
                "scm_min_tls_version": "1.2",
                "ftps_state": "Disabled",
                "remote_debugging_enabled": False,
                "http20_enabled": True,
                "app_settings": [{"name": key, "value": value} for key, value in settings.items()],
            },
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.host_storage.containers.values())),
        )
        # Publishing goes through Entra ID (`func ... publish`, `az functionapp deploy`), so the
        # legacy basic-auth FTP and SCM credentials are switched off.
        self.ftp_basic_auth = web.WebAppFtpAllowed(
            f"{name}-ftp-basic-auth",
            resource_group_name=rg,
            name=self.app.name,
            allow=False,
            opts=child,
        )
        self.scm_basic_auth = web.WebAppScmAllowed(
            f"{name}-scm-basic-auth",
            resource_group_name=rg,
            name=self.app.name,
            allow=False,
            opts=child,
        )

        self.function_app_name = self.app.name
        self.function_app_id = self.app.id
        self.principal_id = self.app.identity.apply(lambda i: i.principal_id)
        self.api_base_url = self.app.default_host_name.apply(lambda host: f"https://{host}/v1")
        self.register_outputs(
            {
                "function_app_name": self.function_app_name,
                "api_base_url": self.api_base_url,
                "host_storage_account_name": self.host_storage.account.name,
            }
        )
