"""Role assignments between tuneplane's managed identities and the resources they use.

Least privilege with built-in roles: data-plane roles scoped to one account or registry, and the
workspace-scoped AzureML Data Scientist (submit jobs, register models, manage deployments; it
cannot create compute or change role assignments) for the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from tuneplane_infra import roles


@dataclass(frozen=True)
class AccessArgs:
    subscription_id: pulumi.Input[str]
    workspace_id: pulumi.Input[str]
    workspace_principal_id: pulumi.Input[str]
    data_storage_id: pulumi.Input[str]
    host_storage_id: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    function_principal_id: pulumi.Input[str]
    cluster_principal_ids: dict[str, pulumi.Input[str]]


class Access(pulumi.ComponentResource):
    """Outputs: assignments (the RoleAssignment resources) and assignment_count."""

    def __init__(self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Access", name, None, opts)
        self.assignments = []

        def grant(label: str, principal: pulumi.Input[str], role: str, scope: pulumi.Input[str]) -> None:
            self.assignments.append(
                roles.assign_role(
                    f"{name}-{label}",
                    subscription_id=args.subscription_id,
                    principal_id=principal,
                    role=role,
                    scope=scope,
                    parent=self,
                )
            )

        fn = args.function_principal_id
        # The control plane submits jobs, registers models and manages endpoint deployments.
        grant("fn-ml-data-scientist", fn, roles.AZUREML_DATA_SCIENTIST, args.workspace_id)
        # Its own host storage: the Functions host needs blob ownership (leases, the deployment
        # package), queues and tables for its triggers' bookkeeping.
        grant("fn-host-blob", fn, roles.STORAGE_BLOB_DATA_OWNER, args.host_storage_id)
        grant("fn-host-queue", fn, roles.STORAGE_QUEUE_DATA_CONTRIBUTOR, args.host_storage_id)
        grant("fn-host-table", fn, roles.STORAGE_TABLE_DATA_CONTRIBUTOR, args.host_storage_id)
        # The data account: file contents (blob), the job store (table), and queues.
        grant("fn-data-blob", fn, roles.STORAGE_BLOB_DATA_CONTRIBUTOR, args.data_storage_id)
        grant("fn-data-queue", fn, roles.STORAGE_QUEUE_DATA_CONTRIBUTOR, args.data_storage_id)
        grant("fn-data-table", fn, roles.STORAGE_TABLE_DATA_CONTRIBUTOR, args.data_storage_id)

        # Identity-based system datastores: the workspace identity reads and writes the blob
        # datastores and the file share that holds code snapshots.
        ws = args.workspace_principal_id
        grant("ws-data-blob", ws, roles.STORAGE_BLOB_DATA_CONTRIBUTOR, args.data_storage_id)
        grant("ws-data-file", ws, roles.STORAGE_FILE_DATA_PRIVILEGED_CONTRIBUTOR, args.data_storage_id)

        # Training nodes mount inputs and upload outputs with their own identity, and pull
        # environment images from the workspace registry.
        for cluster, principal in args.cluster_principal_ids.items():
            grant(f"{cluster}-data-blob", principal, roles.STORAGE_BLOB_DATA_CONTRIBUTOR, args.data_storage_id)
            grant(f"{cluster}-acr-pull", principal, roles.ACR_PULL, args.registry_id)

        self.register_outputs({"assignment_count": len(self.assignments)})
