"""Storage account, blob service and container rules."""

from __future__ import annotations

from tuneplane_infra.policy_rules.rule import Props, Rule, dig

ACCOUNT = ("azure-native:storage:StorageAccount",)
BLOB_SERVICE = ("azure-native:storage:BlobServiceProperties",)
CONTAINER = ("azure-native:storage:BlobContainer",)
MIN_SOFT_DELETE_DAYS = 7


def _https_only(p: Props) -> str | None:
    if p.get("enableHttpsTrafficOnly") is not True:
        return "storage account must accept HTTPS only: set enableHttpsTrafficOnly=true"
    return None


def _min_tls(p: Props) -> str | None:
    if p.get("minimumTlsVersion") not in ("TLS1_2", "TLS1_3"):
        return f"storage account minimumTlsVersion is {p.get('minimumTlsVersion')!r}: set 'TLS1_2'"
    return None


def _no_blob_public_access(p: Props) -> str | None:
    if p.get("allowBlobPublicAccess") is not False:
        return "storage account allows anonymous blob access: set allowBlobPublicAccess=false"
    return None


def _no_shared_key(p: Props) -> str | None:
    if p.get("allowSharedKeyAccess") is not False:
        return "storage account accepts Shared Key authorization: set allowSharedKeyAccess=false and use Entra ID"
    return None


def _replicated(p: Props) -> str | None:
    sku = dig(p, "sku", "name", default="")
    if not sku or sku.endswith("_LRS"):
        return f"storage account sku {sku or 'unset'!r} keeps one datacenter's copy: use GRS, ZRS or GZRS"
    return None


def _no_local_users(p: Props) -> str | None:
    if p.get("isLocalUserEnabled") is not False:
        return "storage account local users (SFTP/SSH keys) are not disabled: set isLocalUserEnabled=false"
    return None


def _trusted_services(p: Props) -> str | None:
    rules = p.get("networkRuleSet")
    if rules is None:
        return None  # no firewall at all: nothing for trusted services to bypass
    bypass = [b.strip() for b in str(rules.get("bypass") or "").split(",")]
    if "AzureServices" not in bypass:
        return "storage firewall does not let trusted Microsoft services through: add 'AzureServices' to networkRuleSet.bypass"
    return None


def _sas_expiry(p: Props) -> str | None:
    if not dig(p, "sasPolicy", "sasExpirationPeriod"):
        return "storage account has no SAS expiration policy: set sasPolicy.sasExpirationPeriod"
    return None


def _soft_delete(p: Props) -> str | None:
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        if dig(p, policy, "enabled") is not True or (dig(p, policy, "days", default=0) or 0) < MIN_SOFT_DELETE_DAYS:
            return f"blob service {policy} must be enabled for at least {MIN_SOFT_DELETE_DAYS} days"
    return None


def _container_private(p: Props) -> str | None:
    if p.get("publicAccess") not in (None, "None"):
        return f"container publicAccess is {p.get('publicAccess')!r}: set 'None'"
    return None


RULES = (
    Rule("storage-https-only", ("CKV_AZURE_3",), ACCOUNT, "Storage accounts accept HTTPS traffic only.", _https_only),
    Rule("storage-min-tls", ("CKV_AZURE_44",), ACCOUNT, "Storage accounts require TLS 1.2 or later.", _min_tls),
    Rule("storage-no-public-blobs", ("CKV_AZURE_190", "CKV2_AZURE_47"), ACCOUNT,
         "Storage accounts forbid anonymous (public) blob access.", _no_blob_public_access),
    Rule("storage-no-shared-key", ("CKV2_AZURE_40",), ACCOUNT,
         "Storage accounts are not configured with Shared Key authorization.", _no_shared_key),
    Rule("storage-replicated", ("CKV_AZURE_206",), ACCOUNT, "Storage accounts replicate beyond one datacenter.", _replicated),
    Rule("storage-no-local-users", ("CKV_AZURE_244",), ACCOUNT, "Storage accounts do not use local users.", _no_local_users),
    Rule("storage-trusted-services", ("CKV_AZURE_36",), ACCOUNT,
         "Storage firewalls let trusted Microsoft services through.", _trusted_services),
    Rule("storage-sas-expiry", ("CKV2_AZURE_41",), ACCOUNT, "Storage accounts have a SAS expiration policy.", _sas_expiry),
    Rule("storage-soft-delete", ("CKV2_AZURE_38",), BLOB_SERVICE,
         "Blob and container soft delete are enabled on storage accounts.", _soft_delete),
    Rule("storage-container-private", ("CKV_AZURE_34",), CONTAINER,
         "Blob containers have public access level Private.", _container_private),
)
