"""The policy pack: at least 25 checkov-mapped rules, each proven to fire, none firing on the stack."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from infra_program import VARIANTS, program_for
from pulumi_policy import PolicyResourceOptions, ResourceValidationArgs

from tuneplane_infra.policy_rules import RULES, Rule, StackResource, StackRule, violations
from tuneplane_infra.policy_rules.pack import build_policies

RESOURCE_RULES = [r for r in RULES if isinstance(r, Rule)]
STACK_RULES = [r for r in RULES if isinstance(r, StackRule)]

CHECKOV = re.compile(r"CKV2?_AZURE_\d+")

COMPLIANT_FUNCTION_APP = {
    "kind": "functionapp,linux",
    "httpsOnly": True,
    "identity": {"type": "SystemAssigned"},
    "siteConfig": {"minTlsVersion": "1.2", "remoteDebuggingEnabled": False, "ftpsState": "Disabled", "http20Enabled": True},
}

# One violating resource per rule: (resource type, props). Each breaks exactly the rule it is for.
VIOLATIONS: dict[str, tuple[str, dict]] = {
    "storage-https-only": ("storage:StorageAccount", {"enableHttpsTrafficOnly": False}),
    "storage-min-tls": ("storage:StorageAccount", {"minimumTlsVersion": "TLS1_0"}),
    "storage-no-public-blobs": ("storage:StorageAccount", {"allowBlobPublicAccess": True}),
    "storage-no-shared-key": ("storage:StorageAccount", {"allowSharedKeyAccess": True}),
    "storage-replicated": ("storage:StorageAccount", {"sku": {"name": "Standard_LRS"}}),
    "storage-no-local-users": ("storage:StorageAccount", {"isLocalUserEnabled": True}),
    "storage-trusted-services": ("storage:StorageAccount", {"networkRuleSet": {"defaultAction": "Deny", "bypass": "None"}}),
    "storage-sas-expiry": ("storage:StorageAccount", {"sasPolicy": None}),
    "storage-soft-delete": ("storage:BlobServiceProperties", {"containerDeleteRetentionPolicy": {"enabled": False}}),
    "storage-container-private": ("storage:BlobContainer", {"publicAccess": "Blob"}),
    "keyvault-purge-protection": ("keyvault:Vault", {"properties": {"enablePurgeProtection": False}}),
    "keyvault-soft-delete": ("keyvault:Vault", {"properties": {"enableSoftDelete": False}}),
    "keyvault-recoverable": ("keyvault:Vault", {"properties": {"softDeleteRetentionInDays": 3}}),
    "keyvault-firewall": ("keyvault:Vault", {"properties": {"networkAcls": {"defaultAction": "Allow"}}}),
    "ml-compute-local-auth-disabled": ("machinelearningservices:Compute", {"properties": {"disableLocalAuth": False}}),
    "ml-compute-min-nodes-zero": ("machinelearningservices:Compute",
                                  {"properties": {"properties": {"scaleSettings": {"minNodeCount": 1, "maxNodeCount": 2}}}}),
    "functionapp-https-only": ("web:WebApp", {"httpsOnly": False}),
    "functionapp-min-tls": ("web:WebApp", {"siteConfig": {"minTlsVersion": "1.0"}}),
    "functionapp-managed-identity": ("web:WebApp", {"identity": {"type": "None"}}),
    "functionapp-no-remote-debugging": ("web:WebApp", {"siteConfig": {"remoteDebuggingEnabled": True}}),
    "functionapp-ftp-disabled": ("web:WebApp", {"siteConfig": {"ftpsState": "AllAllowed"}}),
    "functionapp-http2": ("web:WebApp", {"siteConfig": {"http20Enabled": False}}),
    "functionapp-cors-not-open": ("web:WebApp", {"siteConfig": {"cors": {"allowedOrigins": ["*"]}}}),
    "acr-admin-disabled": ("containerregistry:Registry", {"adminUserEnabled": True}),
    "acr-anonymous-pull-disabled": ("containerregistry:Registry", {"anonymousPullEnabled": True}),
    "acr-retention-policy": ("containerregistry:Registry", {"policies": {"retentionPolicy": {"status": "disabled"}}}),
}


# CKV_AZURE_42 (recoverable) is soft delete plus purge protection, so it fires with either.
ALSO_BROKEN = {"keyvault-purge-protection": {"keyvault-recoverable"}, "keyvault-soft-delete": {"keyvault-recoverable"}}


def merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def compliant_props(resource_type: str) -> dict:
    """A compliant starting point: the program's own resource of that type."""
    if resource_type == "web:WebApp":
        return copy.deepcopy(COMPLIANT_FUNCTION_APP)
    program = program_for("default")
    if resource_type == "machinelearningservices:Compute":
        return copy.deepcopy(program.one(resource_type, "tuneplane-cpu").inputs)
    return copy.deepcopy(program.of_type(resource_type)[0].inputs)


def test_at_least_25_rules_each_naming_its_checkov_id():
    assert len(RULES) >= 25
    assert len({r.name for r in RULES}) == len(RULES)
    covered = {t.split(":")[1] for r in RESOURCE_RULES for t in r.resource_types}
    assert {"storage", "keyvault", "machinelearningservices", "web", "containerregistry"} <= covered
    for rule in RULES:
        assert CHECKOV.search(rule.description), rule.name


def test_every_rule_has_a_violating_fixture():
    assert set(VIOLATIONS) == {r.name for r in RESOURCE_RULES}
    assert {r.name for r in STACK_RULES} == {"ml-hbi-workspace-storage-private"}  # fixture below


@pytest.mark.parametrize("rule", RESOURCE_RULES, ids=lambda r: r.name)
def test_rule_reports_its_violation_naming_the_checkov_id(rule):
    resource_type, patch = VIOLATIONS[rule.name]
    token = f"azure-native:{resource_type}"
    assert rule.applies_to(token)
    compliant = compliant_props(resource_type)
    assert rule.validate(token, compliant) is None
    message = rule.validate(token, merge(compliant, patch))
    assert message is not None
    for checkov_id in rule.checkov_ids:
        assert checkov_id in message
    # The fixture breaks this rule only (and rules defined to include it).
    broken = {r.name for r in RESOURCE_RULES if r.validate(token, merge(compliant, patch)) is not None}
    assert broken == {rule.name} | ALSO_BROKEN.get(rule.name, set())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_resource_the_program_creates_passes_every_rule(variant):
    program = program_for(variant)
    checked = 0
    for resource in program.resources:
        assert violations(RULES, resource.type, resource.inputs) == [], resource.name
        checked += any(rule.applies_to(resource.type) for rule in RESOURCE_RULES)
    assert checked >= 12  # storage x2, blob services x2, containers, vault, registry, clusters x2, app
    for rule in STACK_RULES:
        assert rule.validate_stack(program.stack_view()) == []


def _with_props(view: list[StackResource], resource_type: str, **changes) -> list[StackResource]:
    return [
        StackResource(r.type, r.urn, {**r.props, **changes}, r.property_dependencies) if r.type == resource_type else r
        for r in view
    ]


def test_hbi_workspace_rule_reports_public_storage():
    [rule] = STACK_RULES
    program = program_for("default")
    data_account = program.one("storage:StorageAccount", "tpdata")
    hbi = _with_props(program.stack_view(), "azure-native:machinelearningservices:Workspace", hbiWorkspace=True)
    [(message, urn)] = rule.validate_stack(hbi)
    assert "CKV2_AZURE_50" in message and urn == data_account.urn
    # The same HBI workspace over a private storage account complies.
    private = _with_props(hbi, "azure-native:storage:StorageAccount", publicNetworkAccess="Disabled")
    assert rule.validate_stack(private) == []


def test_pulumi_policy_wrappers_report_through_the_callback():
    policies = {p.name: p for p in build_policies()}
    assert set(policies) == {r.name for r in RULES}
    for rule in RULES:
        assert rule.checkov in policies[rule.name].description
    reported: list[str] = []
    args = ResourceValidationArgs(
        resource_type="azure-native:containerregistry:Registry",
        props={"adminUserEnabled": True, "policies": {"retentionPolicy": {"status": "enabled"}}},
        urn="urn:pulumi:dev::tuneplane::azure-native:containerregistry:Registry::acr",
        name="acr",
        opts=PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                   additional_secret_outputs=[], custom_timeouts=None, parent=None),
        provider=None,
    )
    for name, policy in policies.items():
        if name in {r.name for r in RESOURCE_RULES}:
            policy.validate(args, lambda message, urn=None: reported.append(message))
    assert len(reported) == 1 and "CKV_AZURE_137" in reported[0]


def test_pack_entry_point_builds_the_pack_from_the_rules():
    policy_dir = Path(__file__).resolve().parents[2] / "infra" / "policy"
    main = (policy_dir / "__main__.py").read_text()
    assert "PolicyPack(" in main and "build_policies()" in main
    manifest = (policy_dir / "PulumiPolicy.yaml").read_text()
    assert "name: python" in manifest
