"""Run the tuneplane Pulumi program under Pulumi's mocks and record what it declares.

The Pulumi engine and Azure Resource Manager are the cloud boundary we cannot reach, so the mocks
stand in for them: they answer each registration the way ARM would (an ARM id, a generated name,
a system identity's principal id, storage endpoints, a host name) and record the inputs.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi_policy.deserialize import deserialize_properties

INFRA = Path(__file__).resolve().parents[2] / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))

SUBSCRIPTION = "00000000-0000-0000-0000-00000000aaaa"
TENANT = "00000000-0000-0000-0000-00000000bbbb"
RESOURCE_GROUP = "tuneplane-dev"

# type token -> (ARM provider path, the input that names the resource)
ARM_TYPES: dict[str, tuple[str, str | None]] = {
    "azure-native:resources:ResourceGroup": ("", "resourceGroupName"),
    "azure-native:storage:StorageAccount": ("Microsoft.Storage/storageAccounts", "accountName"),
    "azure-native:storage:BlobServiceProperties": ("Microsoft.Storage/storageAccounts/{accountName}/blobServices", "blobServicesName"),
    "azure-native:storage:BlobContainer": ("Microsoft.Storage/storageAccounts/{accountName}/blobServices/default/containers", "containerName"),
    "azure-native:keyvault:Vault": ("Microsoft.KeyVault/vaults", "vaultName"),
    "azure-native:operationalinsights:Workspace": ("Microsoft.OperationalInsights/workspaces", "workspaceName"),
    "azure-native:applicationinsights:Component": ("Microsoft.Insights/components", "resourceName"),
    "azure-native:containerregistry:Registry": ("Microsoft.ContainerRegistry/registries", "registryName"),
    "azure-native:machinelearningservices:Workspace": ("Microsoft.MachineLearningServices/workspaces", "workspaceName"),
    "azure-native:machinelearningservices:Compute": ("Microsoft.MachineLearningServices/workspaces/{workspaceName}/computes", "computeName"),
    "azure-native:machinelearningservices:Datastore": ("Microsoft.MachineLearningServices/workspaces/{workspaceName}/datastores", "name"),
    "azure-native:machinelearningservices:OnlineEndpoint": ("Microsoft.MachineLearningServices/workspaces/{workspaceName}/onlineEndpoints", "endpointName"),
    "azure-native:web:AppServicePlan": ("Microsoft.Web/serverfarms", "name"),
    "azure-native:web:WebApp": ("Microsoft.Web/sites", "name"),
    "azure-native:web:WebAppFtpAllowed": ("Microsoft.Web/sites/{name}/basicPublishingCredentialsPolicies", None),
    "azure-native:web:WebAppScmAllowed": ("Microsoft.Web/sites/{name}/basicPublishingCredentialsPolicies", None),
    "azure-native:eventgrid:SystemTopic": ("Microsoft.EventGrid/systemTopics", "systemTopicName"),
    "azure-native:eventgrid:SystemTopicEventSubscription": ("Microsoft.EventGrid/systemTopics/{systemTopicName}/eventSubscriptions", "eventSubscriptionName"),
    "azure-native:authorization:RoleAssignment": ("Microsoft.Authorization/roleAssignments", "roleAssignmentName"),
}
WITH_SYSTEM_IDENTITY = {
    "azure-native:machinelearningservices:Workspace",
    "azure-native:machinelearningservices:Compute",
    "azure-native:machinelearningservices:OnlineEndpoint",
    "azure-native:web:WebApp",
    "azure-native:eventgrid:SystemTopic",
}


def principal_of(logical_name: str) -> str:
    """The fake principal id the mocks give a resource's system identity."""
    return "pid-" + hashlib.sha256(logical_name.encode()).hexdigest()[:12]


@dataclass
class Resource:
    type: str
    name: str
    # Inputs as a policy pack sees them (secrets unwrapped by pulumi_policy's own deserializer).
    inputs: dict[str, Any]
    id: str
    state: dict[str, Any]
    ignore_changes: list[str] = field(default_factory=list)
    # Inputs as registered, with Pulumi's secret envelopes still in place.
    raw_inputs: dict[str, Any] = field(default_factory=dict)
    urn: str = ""
    # input name -> URNs of the resources whose outputs it was built from
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    dependencies: list[str] = field(default_factory=list)  # explicit depends_on URNs


class AzureMocks(pulumi_mocks.Mocks):
    def __init__(self) -> None:
        self.resources: list[Resource] = []
        self.calls: list[str] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        if args.typ.startswith("tuneplane:infra:"):
            return f"{args.name}-component", {}
        if args.typ not in ARM_TYPES:
            raise AssertionError(f"the program declared an unexpected resource type {args.typ}")
        path, name_key = ARM_TYPES[args.typ]
        raw = dict(args.inputs)
        inputs = deserialize_properties(raw)
        # Auto-named like azure-native does: the logical name plus a random-looking suffix.
        name = (inputs.get(name_key) if name_key else None) or args.name.replace("-", "") + "x1y2z3"
        path = path.format(**{k: v for k, v in inputs.items() if isinstance(v, str)})
        rg = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        if args.typ == "azure-native:resources:ResourceGroup":
            arm_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
        elif args.typ == "azure-native:authorization:RoleAssignment":
            arm_id = f"{inputs['scope']}/providers/{path}/{name}"
        else:
            arm_id = f"{rg}/providers/{path}/{name}"
        state = {**inputs, "name": name}
        if args.typ in WITH_SYSTEM_IDENTITY:
            state["identity"] = {**inputs["identity"], "principalId": principal_of(args.name), "tenantId": TENANT}
        if args.typ == "azure-native:storage:StorageAccount":
            state["primaryEndpoints"] = {
                kind: f"https://{name}.{kind}.core.windows.net/" for kind in ("blob", "queue", "table", "file", "dfs")
            }
        if args.typ == "azure-native:web:WebApp":
            state["defaultHostName"] = f"{name}.azurewebsites.net"
        if args.typ == "azure-native:applicationinsights:Component":
            state["connectionString"] = f"InstrumentationKey=fake;IngestionEndpoint=https://{name}.example/"
        if args.typ == "azure-native:machinelearningservices:OnlineEndpoint":
            state["properties"] = {**inputs["properties"], "scoringUri": f"https://{name}.inference.ml.azure.com/score"}
        self.resources.append(Resource(args.typ, args.name, inputs, arm_id, state, raw_inputs=raw))
        return arm_id, state

    def call(self, args: pulumi_mocks.MockCallArgs):
        self.calls.append(args.token)
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": "client", "objectId": "object", "subscriptionId": SUBSCRIPTION, "tenantId": TENANT}
        raise AssertionError(f"the program made an unexpected call {args.token}")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """Also records resource options that never reach Mocks.new_resource (ignore_changes)."""

    def __init__(self, mocks: AzureMocks) -> None:
        super().__init__(mocks)
        self.ignore_changes: dict[str, list[str]] = {}
        self.urns: dict[str, str] = {}
        self.property_dependencies: dict[str, dict[str, list[str]]] = {}
        self.dependencies: dict[str, list[str]] = {}

    def RegisterResource(self, request):
        self.ignore_changes[request.name] = list(request.ignoreChanges)
        self.dependencies[request.name] = list(request.dependencies)
        self.property_dependencies[request.name] = {
            key: list(deps.urns) for key, deps in request.propertyDependencies.items()
        }
        response = super().RegisterResource(request)
        self.urns[request.name] = response.urn
        return response


@dataclass
class Program:
    resources: list[Resource]
    outputs: dict[str, Any]
    calls: list[str]

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == f"azure-native:{typ}"]

    def one(self, typ: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_name(self, name: str) -> Resource:
        return next(r for r in self.resources if r.name == name)

    def stack_view(self):
        """The resources as a stack policy sees them."""
        from tuneplane_infra.policy_rules import StackResource

        return [StackResource(r.type, r.urn, r.inputs, r.property_dependencies) for r in self.resources]


BASE_CONFIG = {"azure-native:location": "eastus2"}


def run_program(config: dict[str, str] | None = None, *, stack: str = "dev") -> Program:
    """Run infra/__main__.py's build() once under fresh mocks with the given stack config."""
    from tuneplane_infra.stack import build

    merged = {**BASE_CONFIG, **{k if ":" in k else f"tuneplane:{k}": v for k, v in (config or {}).items()}}
    pulumi.runtime.set_all_config(merged)
    mocks = AzureMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="tuneplane", stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def body():
        stack_outputs = build()
        return pulumi.Output.from_input(stack_outputs).apply(outputs.update)

    body()
    for resource in mocks.resources:
        resource.ignore_changes = monitor.ignore_changes.get(resource.name, [])
        resource.urn = monitor.urns[resource.name]
        resource.property_dependencies = monitor.property_dependencies.get(resource.name, {})
        resource.dependencies = monitor.dependencies.get(resource.name, [])
    return Program(mocks.resources, outputs, mocks.calls)


# The stack variants the tests cover; each runs once per session (about a second each).
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "isolated": {"networkIsolation": "managed-vnet"},
    "low-priority": {"lowPriority": "true", "cpuMaxNodes": "6", "gpuMaxNodes": "3", "gpuVmSize": "Standard_NC24ads_A100_v4"},
    # Phase two, with a bootstrap API key (a secret app setting) as a real deployment would have.
    "events": {"enableEvents": "true", "apiKey": "sk-test-123"},
}

_programs: dict[str, Program] = {}


def program_for(variant: str) -> Program:
    if variant not in _programs:
        _programs[variant] = run_program(VARIANTS[variant])
    return _programs[variant]
