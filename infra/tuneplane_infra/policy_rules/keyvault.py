"""Key vault rules."""

from __future__ import annotations

from tuneplane_infra.policy_rules.rule import Props, Rule, dig

VAULT = ("azure-native:keyvault:Vault",)


def _purge_protection(p: Props) -> str | None:
    if dig(p, "properties", "enablePurgeProtection") is not True:
        return "key vault purge protection is off: set properties.enablePurgeProtection=true"
    return None


def _soft_delete(p: Props) -> str | None:
    if dig(p, "properties", "enableSoftDelete") is False:
        return "key vault soft delete is disabled: set properties.enableSoftDelete=true"
    return None


def _recoverable(p: Props) -> str | None:
    days = dig(p, "properties", "softDeleteRetentionInDays", default=90)
    if dig(p, "properties", "enableSoftDelete") is False or dig(p, "properties", "enablePurgeProtection") is not True:
        return "key vault is not recoverable: enable soft delete and purge protection"
    if not 7 <= days <= 90:
        return f"key vault soft delete retention is {days} days: use 7 to 90"
    return None


def _firewall(p: Props) -> str | None:
    if dig(p, "properties", "networkAcls", "defaultAction") != "Deny":
        return "key vault firewall allows every network: set properties.networkAcls.defaultAction='Deny'"
    return None


RULES = (
    Rule("keyvault-purge-protection", ("CKV_AZURE_110",), VAULT, "Key vaults enable purge protection.", _purge_protection),
    Rule("keyvault-soft-delete", ("CKV_AZURE_111",), VAULT, "Key vaults enable soft delete.", _soft_delete),
    Rule("keyvault-recoverable", ("CKV_AZURE_42",), VAULT,
         "Key vaults are recoverable (soft delete for 7-90 days plus purge protection).", _recoverable),
    Rule("keyvault-firewall", ("CKV_AZURE_109",), VAULT, "Key vault firewalls deny by default.", _firewall),
)
