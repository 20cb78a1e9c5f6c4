"""A hardened storage account, shared by the workspace (data) and the Function App (host)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
from pulumi_azure_native import storage

SOFT_DELETE_DAYS = 7


class HardenedStorage:
    """A StorageAccount plus its blob service settings and private containers.

    Not a ComponentResource of its own: it belongs to the component that owns the data.
    """

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        sku: str,
        containers: list[str],
        tags: Mapping[str, str],
        parent: pulumi.Resource,
    ) -> None:
        opts = pulumi.ResourceOptions(parent=parent)
        self.account = storage.StorageAccount(
            name,
            resource_group_name=resource_group_name,
            location=location,
            kind="StorageV2",
            sku={"name": sku},
            access_tier="Hot",
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            allow_blob_public_access=False,
            # Every client (Function host, Azure ML with identity datastores, Event Grid dead
            # lettering) authenticates with Entra ID, so account keys are never needed.
            allow_shared_key_access=False,
            default_to_o_auth_authentication=True,
            allow_cross_tenant_replication=False,
            is_local_user_enabled=False,
            is_sftp_enabled=False,
            # Public endpoint stays reachable (the Function App has no VNet), but trusted Azure
            # services such as Azure ML and Event Grid may always bypass the network rules.
            network_rule_set={"default_action": "Allow", "bypass": "AzureServices"},
            sas_policy={"sas_expiration_period": "1.00:00:00", "expiration_action": "Log"},
            encryption={
                "key_source": "Microsoft.Storage",
                "require_infrastructure_encryption": True,
                "services": {
                    "blob": {"enabled": True, "key_type": "Account"},
                    "file": {"enabled": True, "key_type": "Account"},
                    # Account-scoped keys for queues and tables too, so infrastructure
                    # encryption covers them as well.
                    "queue": {"enabled": True, "key_type": "Account"},
                    "table": {"enabled": True, "key_type": "Account"},
                },
            },
            tags=dict(tags),
            opts=opts,
        )
        self.blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            account_name=self.account.name,
            resource_group_name=resource_group_name,
            blob_services_name="default",
            delete_retention_policy={"enabled": True, "days": SOFT_DELETE_DAYS},
            container_delete_retention_policy={"enabled": True, "days": SOFT_DELETE_DAYS},
            opts=opts,
        )
        self.containers: dict[str, storage.BlobContainer] = {
            container: storage.BlobContainer(
                f"{name}-{container}",
                account_name=self.account.name,
                resource_group_name=resource_group_name,
                container_name=container,
                public_access="None",
                opts=pulumi.ResourceOptions(parent=parent, depends_on=[self.blob_service]),
            )
            for container in containers
        }

    @property
    def blob_endpoint(self) -> pulumi.Output[str]:
        return self.account.primary_endpoints.apply(lambda e: e.blob)

    @property
    def table_endpoint(self) -> pulumi.Output[str]:
        return self.account.primary_endpoints.apply(lambda e: e.table)

    @property
    def queue_endpoint(self) -> pulumi.Output[str]:
        return self.account.primary_endpoints.apply(lambda e: e.queue)
