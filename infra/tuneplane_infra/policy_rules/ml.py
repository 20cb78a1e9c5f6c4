"""Azure Machine Learning compute rules."""

from __future__ import annotations

from collections.abc import Sequence

from tuneplane_infra.policy_rules.rule import Props, Rule, StackResource, StackRule, dig

COMPUTE = ("azure-native:machinelearningservices:Compute",)
WORKSPACE = "azure-native:machinelearningservices:Workspace"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"


def _local_auth_disabled(p: Props) -> str | None:
    if dig(p, "properties", "disableLocalAuth") is not True:
        return "compute accepts local (key/SSH) authentication: set properties.disableLocalAuth=true"
    return None


def _min_nodes_zero(p: Props) -> str | None:
    if dig(p, "properties", "computeType") != "AmlCompute":
        return None
    minimum = dig(p, "properties", "properties", "scaleSettings", "minNodeCount", default=0)
    if minimum != 0:
        return f"compute cluster keeps {minimum} node(s) running when idle: set scaleSettings.minNodeCount=0"
    return None


def _hbi_storage_private(resources: Sequence[StackResource]) -> list[tuple[str, str]]:
    by_urn = {r.urn: r for r in resources}
    problems = []
    for ws in resources:
        if ws.type != WORKSPACE or ws.props.get("hbiWorkspace") is not True:
            continue
        for urn in ws.property_dependencies.get("storageAccount", []):
            account = by_urn.get(urn)
            if account and account.type == STORAGE_ACCOUNT and account.props.get("publicNetworkAccess") != "Disabled":
                problems.append((
                    "workspace holds high-business-impact data but its storage account is reachable from public "
                    "networks: set publicNetworkAccess='Disabled' on the storage account",
                    account.urn,
                ))
    return problems


RULES = (
    StackRule("ml-hbi-workspace-storage-private", ("CKV2_AZURE_50",),
              "Storage accounts holding a high-business-impact ML workspace's data are not publicly accessible.",
              _hbi_storage_private),
    Rule("ml-compute-local-auth-disabled", ("CKV_AZURE_142",), COMPUTE,
         "Machine Learning compute clusters disable local authentication.", _local_auth_disabled),
    Rule("ml-compute-min-nodes-zero", ("CKV_AZURE_150",), COMPUTE,
         "Machine Learning compute clusters scale to 0 nodes.", _min_nodes_zero),
)
