"""Stack settings: every `pulumi config set` knob, read once and checked before any resource exists.

A bad value fails `pulumi preview` with a message that names the config key, so nothing is half
created. DEPLOY.md documents the same keys in a table.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

import pulumi

NAMESPACE = "tuneplane"

NetworkIsolation = Literal["public", "managed-vnet"]
EndpointAuthMode = Literal["Key", "AMLToken", "AADToken"]

# Hosts a training job must reach when outbound traffic is locked down: the base model download
# (Hugging Face) and pip installs on top of the curated environment (PyPI).
DEFAULT_OUTBOUND_FQDNS = (
    "huggingface.co",
    "*.huggingface.co",
    "*.hf.co",
    "pypi.org",
    "files.pythonhosted.org",
)

_CONTAINER_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,14}[a-zA-Z0-9]$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")


class SettingError(ValueError):
    """A config value is missing or invalid; the message names the `tuneplane:` key."""


@dataclass(frozen=True)
class StackSettings:
    location: str
    resource_group_name: str
    network_isolation: NetworkIsolation = "public"
    outbound_fqdns: tuple[str, ...] = DEFAULT_OUTBOUND_FQDNS
    cpu_cluster_name: str = "cpu-cluster"
    cpu_vm_size: str = "Standard_DS3_v2"
    cpu_max_nodes: int = 2
    gpu_cluster_name: str = "gpu-cluster"
    gpu_vm_size: str = "Standard_NC4as_T4_v3"
    gpu_max_nodes: int = 1
    low_priority: bool = False
    idle_seconds_before_scale_down: int = 600
    endpoint_name: str = "tuneplane"
    endpoint_auth_mode: EndpointAuthMode = "AADToken"
    function_max_instances: int = 40
    function_instance_memory_mb: int = 2048
    training_data_container: str = "training-data"
    files_container: str = "files"
    enable_events: bool = False
    event_function_name: str = "training_blob_created"
    storage_sku: str = "Standard_GRS"
    tags: dict[str, str] = field(default_factory=dict)
    # Optional bootstrap key for the project `default` (TUNEPLANE_API_KEY); a Pulumi secret.
    api_key: pulumi.Output[str] | None = None

    @property
    def isolated(self) -> bool:
        return self.network_isolation == "managed-vnet"


def _stack_suffix() -> str:
    """A short stable hash of org/project/stack: region-unique names (the online endpoint) need one."""
    identity = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:6]


def _int(config: pulumi.Config, key: str, default: int, low: int, high: int) -> int:
    raw = config.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{NAMESPACE}:{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingError(f"{NAMESPACE}:{key} must be between {low} and {high}, got {value}")
    return value


def _bool(config: pulumi.Config, key: str, default: bool) -> bool:
    raw = config.get(key)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise SettingError(f"{NAMESPACE}:{key} must be true or false, got {raw!r}")


def _choice(config: pulumi.Config, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key) or default
    if value not in allowed:
        raise SettingError(f"{NAMESPACE}:{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _name(config: pulumi.Config, key: str, default: str, pattern: re.Pattern[str], rule: str) -> str:
    value = config.get(key) or default
    if not pattern.match(value):
        raise SettingError(f"{NAMESPACE}:{key} {value!r} is not a valid name: {rule}")
    return value


def load_settings() -> StackSettings:
    config = pulumi.Config(NAMESPACE)
    location = config.get("location") or pulumi.Config("azure-native").get("location")
    if not location:
        raise SettingError(
            f"{NAMESPACE}:location is required (or azure-native:location): "
            "the Azure region, e.g. `pulumi config set azure-native:location eastus2`"
        )
    stack = pulumi.get_stack()
    fqdns_raw = config.get_object("outboundFqdns")
    if fqdns_raw is None:
        fqdns = DEFAULT_OUTBOUND_FQDNS
    elif isinstance(fqdns_raw, list) and all(isinstance(f, str) and f for f in fqdns_raw):
        fqdns = tuple(fqdns_raw)
    else:
        raise SettingError(f"{NAMESPACE}:outboundFqdns must be a JSON list of host names, got {fqdns_raw!r}")
    tags_raw = config.get_object("tags") or {}
    if not isinstance(tags_raw, dict) or not all(isinstance(v, str) for v in tags_raw.values()):
        raise SettingError(f"{NAMESPACE}:tags must be a JSON object of strings, got {tags_raw!r}")
    storage_sku = config.get("storageSku") or "Standard_GRS"
    if storage_sku.endswith("_LRS"):
        # Locally redundant storage loses the training data with one datacenter (CKV_AZURE_206).
        raise SettingError(f"{NAMESPACE}:storageSku must replicate beyond one datacenter (GRS, ZRS, GZRS), got {storage_sku!r}")

    cpu_max = _int(config, "cpuMaxNodes", 2, 1, 100)
    gpu_max = _int(config, "gpuMaxNodes", 1, 1, 100)
    settings = StackSettings(
        location=location,
        resource_group_name=config.get("resourceGroupName") or f"tuneplane-{stack}",
        network_isolation=_choice(config, "networkIsolation", "public", ("public", "managed-vnet")),  # type: ignore[arg-type]
        outbound_fqdns=fqdns,
        cpu_cluster_name=_name(config, "cpuClusterName", "cpu-cluster", _CLUSTER_NAME,
                               "3-16 letters, digits or dashes, starting with a letter"),
        cpu_vm_size=config.get("cpuVmSize") or "Standard_DS3_v2",
        cpu_max_nodes=cpu_max,
        gpu_cluster_name=_name(config, "gpuClusterName", "gpu-cluster", _CLUSTER_NAME,
                               "3-16 letters, digits or dashes, starting with a letter"),
        gpu_vm_size=config.get("gpuVmSize") or "Standard_NC4as_T4_v3",
        gpu_max_nodes=gpu_max,
        low_priority=_bool(config, "lowPriority", False),
        idle_seconds_before_scale_down=_int(config, "idleSecondsBeforeScaleDown", 600, 60, 86400),
        endpoint_name=_name(config, "endpointName", f"tuneplane-{stack}-{_stack_suffix()}"[:32].rstrip("-"),
                            _ENDPOINT_NAME, "3-32 letters, digits or dashes, starting with a letter, unique in the region"),
        endpoint_auth_mode=_choice(config, "endpointAuthMode", "AADToken", ("Key", "AMLToken", "AADToken")),  # type: ignore[arg-type]
        function_max_instances=_int(config, "functionMaxInstances", 40, 1, 1000),
        function_instance_memory_mb=int(_choice(config, "functionInstanceMemoryMb", "2048", ("512", "2048", "4096"))),
        training_data_container=_name(config, "trainingDataContainer", "training-data", _CONTAINER_NAME,
                                      "3-63 lowercase letters, digits or single dashes"),
        files_container=_name(config, "filesContainer", "files", _CONTAINER_NAME,
                              "3-63 lowercase letters, digits or single dashes"),
        enable_events=_bool(config, "enableEvents", False),
        event_function_name=_name(config, "eventFunctionName", "training_blob_created", _FUNCTION_NAME,
                                  "the Python function name of the Event Grid trigger in functions/function_app.py"),
        storage_sku=storage_sku,
        tags={"app": "tuneplane", "stack": stack, **tags_raw},
        api_key=config.get_secret("apiKey"),
    )
    if settings.training_data_container == settings.files_container:
        raise SettingError(f"{NAMESPACE}:trainingDataContainer and {NAMESPACE}:filesContainer must differ")
    return settings
