"""The whole tuneplane stack: one function that wires the components and returns the outputs."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization, resources

from tuneplane_infra.access import Access, AccessArgs
from tuneplane_infra.compute import ClusterSpec, Compute, ComputeArgs
from tuneplane_infra.endpoint import Endpoint, EndpointArgs
from tuneplane_infra.events import Events, EventsArgs
from tuneplane_infra.functions import DEPLOYMENT_CONTAINER, ControlPlaneSettings, Functions, FunctionsArgs
from tuneplane_infra.settings import StackSettings, load_settings
from tuneplane_infra.workspace import Workspace, WorkspaceArgs


def build(settings: StackSettings | None = None) -> dict[str, pulumi.Input]:
    """Declare every resource; returns the stack outputs (exported by infra/__main__.py)."""
    settings = settings or load_settings()
    client = authorization.get_client_config_output()
    tags = settings.tags

    group = resources.ResourceGroup(
        "tuneplane-rg",
        resource_group_name=settings.resource_group_name,
        location=settings.location,
        tags=tags,
    )
    rg = group.name

    workspace = Workspace(
        "tuneplane",
        WorkspaceArgs(
            resource_group_name=rg,
            location=settings.location,
            tenant_id=client.tenant_id,
            storage_sku=settings.storage_sku,
            data_containers=[settings.files_container, settings.training_data_container],
            isolated=settings.isolated,
            files_container=settings.files_container,
            outbound_fqdns=settings.outbound_fqdns,
            tags=tags,
        ),
    )
    compute = Compute(
        "tuneplane",
        ComputeArgs(
            resource_group_name=rg,
            location=settings.location,
            workspace_name=workspace.workspace_name,
            cpu=ClusterSpec(settings.cpu_cluster_name, settings.cpu_vm_size, settings.cpu_max_nodes),
            gpu=ClusterSpec(settings.gpu_cluster_name, settings.gpu_vm_size, settings.gpu_max_nodes),
            low_priority=settings.low_priority,
            idle_seconds_before_scale_down=settings.idle_seconds_before_scale_down,
            tags=tags,
        ),
    )
    endpoint = Endpoint(
        "tuneplane",
        EndpointArgs(
            resource_group_name=rg,
            location=settings.location,
            workspace_name=workspace.workspace_name,
            endpoint_name=settings.endpoint_name,
            auth_mode=settings.endpoint_auth_mode,
            tags=tags,
        ),
    )
    functions = Functions(
        "tuneplane",
        FunctionsArgs(
            resource_group_name=rg,
            location=settings.location,
            storage_sku=settings.storage_sku,
            max_instances=settings.function_max_instances,
            instance_memory_mb=settings.function_instance_memory_mb,
            insights_connection_string=workspace.insights.connection_string,
            control_plane=ControlPlaneSettings(
                subscription_id=client.subscription_id,
                resource_group_name=rg,
                workspace_name=workspace.workspace_name,
                blob_url=workspace.data.blob_endpoint,
                table_url=workspace.data.table_endpoint,
                files_container=settings.files_container,
                datastore_name=workspace.datastore_name,
                training_data_container=settings.training_data_container,
                cpu_cluster_name=compute.cpu_cluster_name,
                gpu_cluster_name=compute.gpu_cluster_name,
                endpoint_name=endpoint.endpoint_name,
                endpoint_auth_mode=settings.endpoint_auth_mode,
                api_key=settings.api_key,
            ),
            tags=tags,
        ),
    )
    Access(
        "tuneplane",
        AccessArgs(
            subscription_id=client.subscription_id,
            workspace_id=workspace.workspace_id,
            workspace_principal_id=workspace.workspace_principal_id,
            data_storage_id=workspace.data.account.id,
            host_storage_id=functions.host_storage.account.id,
            registry_id=workspace.registry.id,
            function_principal_id=functions.principal_id,
            cluster_principal_ids={"cpu": compute.cpu_principal_id, "gpu": compute.gpu_principal_id},
        ),
    )
    events = Events(
        "tuneplane",
        EventsArgs(
            resource_group_name=rg,
            location=settings.location,
            subscription_id=client.subscription_id,
            data_storage_id=workspace.data.account.id,
            data_storage_name=workspace.data.account.name,
            training_data_container=settings.training_data_container,
            function_app_id=functions.function_app_id,
            function_name=settings.event_function_name,
            subscribe=settings.enable_events,
            tags=tags,
        ),
    )

    return {
        "apiBaseUrl": functions.api_base_url,
        "resourceGroupName": rg,
        "workspaceName": workspace.workspace_name,
        "cpuClusterName": compute.cpu_cluster_name,
        "gpuClusterName": compute.gpu_cluster_name,
        "endpointName": endpoint.endpoint_name,
        "functionAppName": functions.function_app_name,
        "dataStorageAccountName": workspace.data.account.name,
        "functionStorageAccountName": functions.host_storage.account.name,
        "filesContainerName": settings.files_container,
        "datastoreName": workspace.datastore_name,
        "trainingDataContainerName": settings.training_data_container,
        "deploymentContainerName": DEPLOYMENT_CONTAINER,
        "deadLetterContainerName": events.dead_letter_container_name,
        "eventsEnabled": settings.enable_events,
    }
