"""Secure-by-default rules for tuneplane's Azure resources, each mapped to a checkov check.

Pure functions over the resource properties Pulumi sends a policy pack (camelCase input names),
importable without pulumi_policy: infra/policy/__main__.py wraps them in a PolicyPack, whose
constructor starts serving gRPC, and tests call them directly.
"""

from tuneplane_infra.policy_rules.rule import Rule, StackResource, StackRule, violations
from tuneplane_infra.policy_rules import appservice, keyvault, ml, registry, storage

RULES: tuple[Rule | StackRule, ...] = (*storage.RULES, *keyvault.RULES, *ml.RULES, *appservice.RULES, *registry.RULES)

__all__ = ["RULES", "Rule", "StackResource", "StackRule", "violations"]
