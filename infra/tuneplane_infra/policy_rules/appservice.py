"""Function App (Microsoft.Web/sites of kind functionapp) rules."""

from __future__ import annotations

from tuneplane_infra.policy_rules.rule import Props, Rule, dig

SITE = ("azure-native:web:WebApp",)


def _https_only(p: Props) -> str | None:
    if p.get("httpsOnly") is not True:
        return "function app accepts plain HTTP: set httpsOnly=true"
    return None


def _min_tls(p: Props) -> str | None:
    if dig(p, "siteConfig", "minTlsVersion") not in ("1.2", "1.3"):
        return f"function app minTlsVersion is {dig(p, 'siteConfig', 'minTlsVersion')!r}: set siteConfig.minTlsVersion='1.2'"
    return None


def _managed_identity(p: Props) -> str | None:
    if "Assigned" not in str(dig(p, "identity", "type", default="None")):
        return "function app has no managed identity: set identity.type='SystemAssigned'"
    return None


def _no_remote_debugging(p: Props) -> str | None:
    if dig(p, "siteConfig", "remoteDebuggingEnabled") is True:
        return "function app has remote debugging on: set siteConfig.remoteDebuggingEnabled=false"
    return None


def _ftp_disabled(p: Props) -> str | None:
    # Stricter than checkov, which also accepts FtpsOnly: nothing publishes over FTP here.
    if dig(p, "siteConfig", "ftpsState") != "Disabled":
        return f"function app ftpsState is {dig(p, 'siteConfig', 'ftpsState')!r}: set siteConfig.ftpsState='Disabled'"
    return None


def _http2(p: Props) -> str | None:
    if dig(p, "siteConfig", "http20Enabled") is not True:
        return "function app does not serve HTTP/2: set siteConfig.http20Enabled=true"
    return None


def _cors_not_open(p: Props) -> str | None:
    if "*" in (dig(p, "siteConfig", "cors", "allowedOrigins", default=[]) or []):
        return "function app CORS allows every origin ('*'): list the allowed origins"
    return None


RULES = (
    Rule("functionapp-https-only", ("CKV_AZURE_70",), SITE, "Function apps are only accessible over HTTPS.", _https_only),
    Rule("functionapp-min-tls", ("CKV_AZURE_145",), SITE, "Function apps require TLS 1.2 or later.", _min_tls),
    Rule("functionapp-managed-identity", ("CKV_AZURE_71",), SITE, "Function apps use a managed identity.", _managed_identity),
    Rule("functionapp-no-remote-debugging", ("CKV_AZURE_72",), SITE,
         "Function apps do not enable remote debugging.", _no_remote_debugging),
    Rule("functionapp-ftp-disabled", ("CKV_AZURE_78",), SITE, "Function apps disable FTP deployments.", _ftp_disabled),
    Rule("functionapp-http2", ("CKV_AZURE_67",), SITE, "Function apps use the latest HTTP version.", _http2),
    Rule("functionapp-cors-not-open", ("CKV_AZURE_62",), SITE,
         "Function apps are not accessible from all origins (no CORS '*').", _cors_not_open),
)
