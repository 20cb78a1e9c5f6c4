"""Built-in Azure role definition GUIDs (stable across tenants) and one way to assign them."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization

# Only the roles tuneplane grants. Each is the narrowest built-in role that lets the principal do
# its job: data-plane roles instead of Contributor, and never a role that can assign roles.
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_FILE_DATA_PRIVILEGED_CONTRIBUTOR = "69566ab7-960f-475b-8e7c-b3118f30c6bd"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"

ROLE_NAMES = {
    AZUREML_DATA_SCIENTIST: "AzureML Data Scientist",
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "Storage Queue Data Contributor",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
    STORAGE_FILE_DATA_PRIVILEGED_CONTRIBUTOR: "Storage File Data Privileged Contributor",
    ACR_PULL: "AcrPull",
}


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role
    )


def assign_role(
    name: str,
    *,
    subscription_id: pulumi.Input[str],
    principal_id: pulumi.Input[str],
    role: str,
    scope: pulumi.Input[str],
    parent: pulumi.Resource,
) -> authorization.RoleAssignment:
    """Grant a managed identity (always a service principal) one built-in role on one scope."""
    if role not in ROLE_NAMES:
        raise ValueError(f"unknown role GUID {role!r}: add it to ROLE_NAMES with its built-in name")
    return authorization.RoleAssignment(
        name,
        principal_id=principal_id,
        # Declaring the type skips Entra ID's replication check, so a brand-new identity can be
        # granted a role in the same deployment that created it.
        principal_type="ServicePrincipal",
        role_definition_id=role_definition_id(subscription_id, role),
        scope=scope,
        description=f"tuneplane: {ROLE_NAMES[role]}",
        opts=pulumi.ResourceOptions(parent=parent),
    )
