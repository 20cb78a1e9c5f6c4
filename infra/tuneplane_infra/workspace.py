"""The Azure ML workspace and what it stands on: storage, key vault, monitoring, registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import (
    applicationinsights,
    containerregistry,
    keyvault,
    machinelearningservices as ml,
    operationalinsights,
)

from tuneplane_infra.storage import HardenedStorage

# The Azure ML datastore through which jobs read their inputs and write their outputs on the files
# container (the control plane's TUNEPLANE_AZURE_DATASTORE default).
DATASTORE_NAME = "tuneplanefiles"


@dataclass(frozen=True)
class WorkspaceArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    tenant_id: pulumi.Input[str]
    storage_sku: str
    # Containers on the data account: uploaded files and the watched training-data inbox.
    data_containers: list[str]
    isolated: bool
    # The container of file contents and job folders; the datastore points at it.
    files_container: str = "files"
    datastore_name: str = DATASTORE_NAME
    outbound_fqdns: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


class Workspace(pulumi.ComponentResource):
    """Outputs: workspace_name, workspace_id, workspace_principal_id, data storage account and
    endpoints, key vault, registry and Application Insights ids."""

    def __init__(self, name: str, args: WorkspaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Workspace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = args.resource_group_name
        tags = dict(args.tags)

        self.logs = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=rg,
            location=args.location,
            sku={"name": "PerGB2018"},
            retention_in_days=30,
            tags=tags,
            opts=child,
        )
        self.insights = applicationinsights.Component(
            f"{name}-insights",
            resource_group_name=rg,
            location=args.location,
            kind="web",
            application_type="web",
            # Workspace-based Application Insights: telemetry lands in the Log Analytics workspace.
            workspace_resource_id=self.logs.id,
            ingestion_mode="LogAnalytics",
            tags=tags,
            opts=child,
        )
        # The data account is the workspace's default storage: uploaded files, training data and
        # Azure ML's own system datastores all live here.
        self.data = HardenedStorage(
            "tpdata",
            resource_group_name=rg,
            location=args.location,
            sku=args.storage_sku,
            containers=list(dict.fromkeys([args.files_container, *args.data_containers])),
            tags=tags,
            parent=self,
        )
        self.vault = keyvault.Vault(
            f"{name}-kv",
            resource_group_name=rg,
            location=args.location,
            properties={
                "tenant_id": args.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enable_rbac_authorization": True,
                "enable_soft_delete": True,
                "soft_delete_retention_in_days": 90,
                "enable_purge_protection": True,
                # Azure ML reaches its vault as a trusted service; nobody else needs the network path.
                "network_acls": {"default_action": "Deny", "bypass": "AzureServices"},
            },
            tags=tags,
            opts=child,
        )
        self.registry = containerregistry.Registry(
            f"{name}acr",
            resource_group_name=rg,
            location=args.location,
            # Premium: managed-VNet isolation reaches the registry over a private endpoint, and the
            # untagged-manifest retention policy needs it too.
            sku={"name": "Premium"},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            policies={"retention_policy": {"status": "enabled", "days": 7}},
            tags=tags,
            opts=child,
        )
        self.workspace = ml.Workspace(
            f"{name}-mlw",
            resource_group_name=rg,
            location=args.location,
            kind="Default",
            sku={"name": "Basic", "tier": "Basic"},
            identity={"type": "SystemAssigned"},
            friendly_name="tuneplane",
            storage_account=self.data.account.id,
            key_vault=self.vault.id,
            application_insights=self.insights.id,
            container_registry=self.registry.id,
            # The system datastores use the workspace identity, not account keys, which is what
            # lets the storage account run with shared-key access disabled.
            system_datastores_auth_mode="identity",
            v1_legacy_mode=False,
            # High-business-impact mode needs storage without public network access (CKV2_AZURE_50),
            # which the Function App, having no VNet, could not reach.
            hbi_workspace=False,
            # The Function App calls the workspace API over its Entra-protected public endpoint.
            public_network_access="Enabled",
            managed_network=self._managed_network(args),
            tags=tags,
            opts=child,
        )
        # The control plane stages each job's folder on the files container and the job mounts it
        # through this datastore. No credentials: Azure ML reaches the blobs with the workspace
        # identity (and a job's compute with its own), as the account allows no shared key.
        self.datastore = ml.Datastore(
            f"{name}-files-datastore",
            resource_group_name=rg,
            workspace_name=self.workspace.name,
            name=args.datastore_name,
            properties={
                "datastore_type": "AzureBlob",
                "account_name": self.data.account.name,
                "container_name": args.files_container,
                "credentials": {"credentials_type": "None"},
                "service_data_access_auth_identity": "WorkspaceSystemAssignedIdentity",
                "description": "tuneplane job inputs and outputs (identity-based access)",
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.data.containers[args.files_container]]),
        )

        self.workspace_name = self.workspace.name
        self.datastore_name = self.datastore.name
        self.workspace_id = self.workspace.id
        self.workspace_principal_id = self.workspace.identity.apply(lambda i: i.principal_id)
        self.register_outputs(
            {
                "workspace_name": self.workspace_name,
                "workspace_id": self.workspace_id,
                "datastore_name": self.datastore_name,
                "data_storage_account_name": self.data.account.name,
                "key_vault_id": self.vault.id,
                "registry_id": self.registry.id,
                "insights_connection_string": self.insights.connection_string,
            }
        )

    @staticmethod
    def _managed_network(args: WorkspaceArgs) -> dict:
        # Compute lives in the workspace's managed VNet in both modes, which is what allows the
        # clusters to run without node public IPs. Isolation only changes what may go out.
        if not args.isolated:
            return {"isolation_mode": "AllowInternetOutbound"}
        return {
            "isolation_mode": "AllowOnlyApprovedOutbound",
            "firewall_sku": "Standard",
            "outbound_rules": {
                f"allow-{fqdn.replace('*.', 'any-').replace('.', '-')}": {
                    "type": "FQDN",
                    "category": "UserDefined",
                    "destination": fqdn,
                }
                for fqdn in args.outbound_fqdns
            },
        }
