"""The default stack: the full resource set and the properties that make it secure and working."""

from __future__ import annotations

from collections import Counter

from infra_program import SUBSCRIPTION, TENANT, principal_of

from tuneplane_infra import roles
from tuneplane_infra.endpoint import CONTROL_PLANE_OWNED

EXPECTED_TYPES = Counter(
    {
        "azure-native:resources:ResourceGroup": 1,
        "azure-native:operationalinsights:Workspace": 1,
        "azure-native:applicationinsights:Component": 1,
        "azure-native:storage:StorageAccount": 2,
        "azure-native:storage:BlobServiceProperties": 2,
        # files + training-data on the data account, app-package on the host account, dead letters
        "azure-native:storage:BlobContainer": 4,
        "azure-native:keyvault:Vault": 1,
        "azure-native:containerregistry:Registry": 1,
        "azure-native:machinelearningservices:Workspace": 1,
        "azure-native:machinelearningservices:Compute": 2,
        "azure-native:machinelearningservices:Datastore": 1,
        "azure-native:machinelearningservices:OnlineEndpoint": 1,
        "azure-native:web:AppServicePlan": 1,
        "azure-native:web:WebApp": 1,
        "azure-native:web:WebAppFtpAllowed": 1,
        "azure-native:web:WebAppScmAllowed": 1,
        "azure-native:eventgrid:SystemTopic": 1,
        # 7 for the function, 2 for the workspace, 2 per cluster, 1 for the topic's dead letters
        "azure-native:authorization:RoleAssignment": 14,
    }
)


def test_full_resource_set(default_program):
    assert Counter(r.type for r in default_program.resources) == EXPECTED_TYPES
    assert default_program.calls.count("azure-native:authorization:getClientConfig") == 1


def test_storage_accounts_are_hardened(default_program):
    for account in default_program.of_type("storage:StorageAccount"):
        i = account.inputs
        assert i["enableHttpsTrafficOnly"] is True
        assert i["minimumTlsVersion"] == "TLS1_2"
        assert i["allowBlobPublicAccess"] is False
        assert i["allowSharedKeyAccess"] is False
        assert i["defaultToOAuthAuthentication"] is True
        assert i["sku"] == {"name": "Standard_GRS"}
    for service in default_program.of_type("storage:BlobServiceProperties"):
        assert service.inputs["deleteRetentionPolicy"] == {"enabled": True, "days": 7}
        assert service.inputs["containerDeleteRetentionPolicy"] == {"enabled": True, "days": 7}
    for container in default_program.of_type("storage:BlobContainer"):
        assert container.inputs["publicAccess"] == "None"


def test_workspace_identity_and_dependencies(default_program):
    ws = default_program.one("machinelearningservices:Workspace").inputs
    assert ws["identity"] == {"type": "SystemAssigned"}
    assert ws["systemDatastoresAuthMode"] == "identity"
    data = default_program.one("storage:StorageAccount", "tpdata")
    assert ws["storageAccount"] == data.id
    assert ws["keyVault"] == default_program.one("keyvault:Vault").id
    assert ws["containerRegistry"] == default_program.one("containerregistry:Registry").id
    assert ws["applicationInsights"] == default_program.one("applicationinsights:Component").id
    assert ws["publicNetworkAccess"] == "Enabled"
    assert ws["managedNetwork"] == {"isolationMode": "AllowInternetOutbound"}


def test_files_datastore_is_identity_based_on_the_files_container(default_program):
    store = default_program.one("machinelearningservices:Datastore")
    ws = default_program.one("machinelearningservices:Workspace")
    data = default_program.one("storage:StorageAccount", "tpdata")
    assert store.inputs["name"] == "tuneplanefiles"  # the control plane's TUNEPLANE_AZURE_DATASTORE
    assert store.inputs["workspaceName"] == ws.state["name"]
    assert store.inputs["properties"] == {
        "datastoreType": "AzureBlob",
        "accountName": data.state["name"],
        "containerName": "files",
        "credentials": {"credentialsType": "None"},  # no key or SAS: identities only
        "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
        "description": "tuneplane job inputs and outputs (identity-based access)",
    }
    files = next(c for c in default_program.of_type("storage:BlobContainer") if c.inputs["containerName"] == "files")
    assert files.inputs["accountName"] == data.state["name"]
    # Created after its container, so the first job never mounts a missing path.
    assert files.urn in store.dependencies
    assert default_program.outputs["datastoreName"] == "tuneplanefiles"


def test_key_vault_registry_and_monitoring(default_program):
    vault = default_program.one("keyvault:Vault").inputs["properties"]
    assert vault["tenantId"] == TENANT
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert vault["enablePurgeProtection"] is True
    assert "accessPolicies" not in vault
    acr = default_program.one("containerregistry:Registry").inputs
    assert acr["adminUserEnabled"] is False
    assert acr["anonymousPullEnabled"] is False
    insights = default_program.one("applicationinsights:Component").inputs
    assert insights["workspaceResourceId"] == default_program.one("operationalinsights:Workspace").id
    assert insights["ingestionMode"] == "LogAnalytics"


def test_clusters_scale_to_zero_without_public_ips(default_program):
    clusters = {c.inputs["computeName"]: c.inputs for c in default_program.of_type("machinelearningservices:Compute")}
    assert set(clusters) == {"cpu-cluster", "gpu-cluster"}
    for name, cluster in clusters.items():
        props = cluster["properties"]
        assert props["computeType"] == "AmlCompute"
        assert props["disableLocalAuth"] is True
        inner = props["properties"]
        assert inner["enableNodePublicIp"] is False
        assert inner["remoteLoginPortPublicAccess"] == "Disabled"
        assert inner["vmPriority"] == "Dedicated"
        assert inner["scaleSettings"]["minNodeCount"] == 0
        assert inner["scaleSettings"]["nodeIdleTimeBeforeScaleDown"] == "PT600S"
        assert cluster["identity"] == {"type": "SystemAssigned"}
    assert clusters["cpu-cluster"]["properties"]["properties"]["vmSize"] == "Standard_DS3_v2"
    assert clusters["cpu-cluster"]["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 2
    assert clusters["gpu-cluster"]["properties"]["properties"]["vmSize"] == "Standard_NC4as_T4_v3"
    assert clusters["gpu-cluster"]["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 1


def test_endpoint_leaves_traffic_to_the_control_plane(default_program):
    endpoint = default_program.one("machinelearningservices:OnlineEndpoint")
    assert endpoint.inputs["kind"] == "Managed"
    assert endpoint.inputs["properties"]["authMode"] == "AADToken"
    assert "traffic" not in endpoint.inputs["properties"]
    assert endpoint.ignore_changes == CONTROL_PLANE_OWNED == ["properties.traffic", "properties.mirrorTraffic"]
    # No deployment is declared: deployments belong to the control plane.
    assert not [r for r in default_program.resources if "Deployment" in r.type]


def test_function_app_flex_consumption(default_program):
    plan = default_program.one("web:AppServicePlan").inputs
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["reserved"] is True
    app = default_program.one("web:WebApp")
    i = app.inputs
    assert i["serverFarmId"] == default_program.one("web:AppServicePlan").id
    assert i["kind"] == "functionapp,linux"
    assert i["identity"] == {"type": "SystemAssigned"}
    assert i["httpsOnly"] is True
    site = i["siteConfig"]
    assert site["minTlsVersion"] == "1.2"
    assert site["ftpsState"] == "Disabled"
    assert site["remoteDebuggingEnabled"] is False
    config = i["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    host = default_program.one("storage:StorageAccount", "tpfunc")
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == f"https://{host.state['name']}.blob.core.windows.net/app-package"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
    containers = {c.inputs["containerName"]: c.inputs["accountName"] for c in default_program.of_type("storage:BlobContainer")}
    assert containers["app-package"] == host.state["name"]
    for policy in ("web:WebAppFtpAllowed", "web:WebAppScmAllowed"):
        assert default_program.one(policy).inputs["allow"] is False


def test_function_app_settings_select_azure_backend(default_program):
    site = default_program.one("web:WebApp").inputs["siteConfig"]
    settings = {s["name"]: s["value"] for s in site["appSettings"]}
    data = default_program.one("storage:StorageAccount", "tpdata").state["name"]
    host = default_program.one("storage:StorageAccount", "tpfunc").state["name"]
    assert settings == {
        "AzureWebJobsStorage__accountName": host,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": default_program.one("applicationinsights:Component").state["connectionString"],
        "TUNEPLANE_BACKEND": "azure",
        "TUNEPLANE_HOME": "/tmp/tuneplane",  # writable; the package folder is not
        "TUNEPLANE_AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "TUNEPLANE_AZURE_RESOURCE_GROUP": "tuneplane-dev",
        "TUNEPLANE_AZURE_WORKSPACE": default_program.one("machinelearningservices:Workspace").state["name"],
        "TUNEPLANE_AZURE_BLOB_URL": f"https://{data}.blob.core.windows.net/",
        "TUNEPLANE_AZURE_TABLE_URL": f"https://{data}.table.core.windows.net/",
        "TUNEPLANE_AZURE_FILES_CONTAINER": "files",
        "TUNEPLANE_AZURE_DATASTORE": "tuneplanefiles",
        "TUNEPLANE_AZURE_TRAINING_DIR": "training",
        "TUNEPLANE_AZURE_TRAINING_DATA_CONTAINER": "training-data",
        "TUNEPLANE_AZURE_CPU_CLUSTER": "cpu-cluster",
        "TUNEPLANE_AZURE_GPU_CLUSTER": "gpu-cluster",
        "TUNEPLANE_AZURE_ENDPOINT": default_program.outputs["endpointName"],
        "TUNEPLANE_AZURE_ENDPOINT_AUTH_MODE": "aad_token",  # the control plane's spelling of AADToken
    }
    # Identity-based host storage: no connection string or key anywhere in the settings.
    assert "AzureWebJobsStorage" not in settings
    assert not any("AccountKey" in str(v) for v in settings.values())


def _grants(program):
    by_pid = {}
    for a in program.of_type("authorization:RoleAssignment"):
        i = a.inputs
        assert i["principalType"] == "ServicePrincipal"
        prefix = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
        assert i["roleDefinitionId"].startswith(prefix)
        by_pid.setdefault(i["principalId"], set()).add((i["roleDefinitionId"].removeprefix(prefix), i["scope"]))
    return by_pid


def test_rbac_least_privilege(default_program):
    grants = _grants(default_program)
    ws = default_program.one("machinelearningservices:Workspace").id
    data = default_program.one("storage:StorageAccount", "tpdata").id
    host = default_program.one("storage:StorageAccount", "tpfunc").id
    acr = default_program.one("containerregistry:Registry").id
    topic_scope = f"{data}/blobServices/default/containers/eventgrid-deadletter"
    assert grants == {
        principal_of("tuneplane-app"): {
            ("f6c7c914-8db3-469d-8ca1-694a8f32e121", ws),  # AzureML Data Scientist
            ("b7e6dc6d-f1e8-4753-8033-0f276bb0955b", host),  # Storage Blob Data Owner
            ("974c5e8b-45b9-4653-ba55-5f855dd0fb88", host),  # Storage Queue Data Contributor
            ("0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", host),  # Storage Table Data Contributor
            ("ba92f5b4-2d11-453d-a403-e96b0029c9fe", data),  # Storage Blob Data Contributor
            ("974c5e8b-45b9-4653-ba55-5f855dd0fb88", data),
            ("0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", data),
        },
        principal_of("tuneplane-mlw"): {
            ("ba92f5b4-2d11-453d-a403-e96b0029c9fe", data),
            ("69566ab7-960f-475b-8e7c-b3118f30c6bd", data),  # Storage File Data Privileged Contributor
        },
        principal_of("tuneplane-cpu"): {
            ("ba92f5b4-2d11-453d-a403-e96b0029c9fe", data),
            ("7f951dda-4ed3-4680-a7ca-43fe172d538d", acr),  # AcrPull
        },
        principal_of("tuneplane-gpu"): {
            ("ba92f5b4-2d11-453d-a403-e96b0029c9fe", data),
            ("7f951dda-4ed3-4680-a7ca-43fe172d538d", acr),
        },
        principal_of("tuneplane-topic"): {("ba92f5b4-2d11-453d-a403-e96b0029c9fe", topic_scope)},
    }
    # Nothing broad: no Owner, Contributor or User Access Administrator anywhere.
    all_roles = {role for pairs in grants.values() for role, _ in pairs}
    assert all_roles <= set(roles.ROLE_NAMES)
    assert not {"8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "b24988ac-6180-42a0-ab88-20f7382dd24c",
                "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"} & all_roles


def test_events_phase_one_has_topic_but_no_subscription(default_program):
    topic = default_program.one("eventgrid:SystemTopic").inputs
    assert topic["source"] == default_program.one("storage:StorageAccount", "tpdata").id
    assert topic["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic["identity"] == {"type": "SystemAssigned"}
    assert default_program.of_type("eventgrid:SystemTopicEventSubscription") == []
    assert default_program.outputs["eventsEnabled"] is False


def test_stack_outputs(default_program):
    out = default_program.outputs
    app = default_program.one("web:WebApp").state["name"]
    assert out["apiBaseUrl"] == f"https://{app}.azurewebsites.net/v1"
    assert out["workspaceName"] == default_program.one("machinelearningservices:Workspace").state["name"]
    assert out["cpuClusterName"] == "cpu-cluster"
    assert out["gpuClusterName"] == "gpu-cluster"
    assert out["endpointName"].startswith("tuneplane-dev-") and len(out["endpointName"]) <= 32
    assert out["dataStorageAccountName"] == default_program.one("storage:StorageAccount", "tpdata").state["name"]
    assert out["functionStorageAccountName"] == default_program.one("storage:StorageAccount", "tpfunc").state["name"]
    assert out["trainingDataContainerName"] == "training-data"
    assert out["filesContainerName"] == "files"
    assert out["deploymentContainerName"] == "app-package"
    assert out["deadLetterContainerName"] == "eventgrid-deadletter"
    assert out["resourceGroupName"] == "tuneplane-dev"
