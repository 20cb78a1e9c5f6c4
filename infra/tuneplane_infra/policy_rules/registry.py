"""Container registry rules."""

from __future__ import annotations

from tuneplane_infra.policy_rules.rule import Props, Rule, dig

REGISTRY = ("azure-native:containerregistry:Registry",)


def _admin_disabled(p: Props) -> str | None:
    if p.get("adminUserEnabled") is True:
        return "container registry admin account is enabled: set adminUserEnabled=false"
    return None


def _anonymous_pull_disabled(p: Props) -> str | None:
    if p.get("anonymousPullEnabled") is True:
        return "container registry allows anonymous pulls: set anonymousPullEnabled=false"
    return None


def _retention(p: Props) -> str | None:
    if str(dig(p, "policies", "retentionPolicy", "status", default="disabled")).lower() != "enabled":
        return "container registry keeps untagged manifests forever: enable policies.retentionPolicy (Premium SKU)"
    return None


RULES = (
    Rule("acr-admin-disabled", ("CKV_AZURE_137",), REGISTRY, "Container registries disable the admin account.", _admin_disabled),
    Rule("acr-anonymous-pull-disabled", ("CKV_AZURE_138",), REGISTRY,
         "Container registries disable anonymous pulls.", _anonymous_pull_disabled),
    Rule("acr-retention-policy", ("CKV_AZURE_167",), REGISTRY,
         "Container registries clean up untagged manifests with a retention policy.", _retention),
)
