"""Stack config validation: bad values fail before any resource exists, naming the key."""

from __future__ import annotations

import pulumi
import pytest
from infra_program import AzureMocks, program_for, run_program

from tuneplane_infra.settings import SettingError, load_settings


def settings_for(config: dict[str, str]):
    pulumi.runtime.set_all_config(config)
    pulumi.runtime.set_mocks(AzureMocks(), project="tuneplane", stack="prod", preview=True)
    return load_settings()


def test_defaults():
    s = settings_for({"azure-native:location": "westeurope"})
    assert s.location == "westeurope"
    assert s.resource_group_name == "tuneplane-prod"
    assert s.network_isolation == "public" and not s.isolated
    assert (s.cpu_max_nodes, s.gpu_max_nodes, s.low_priority) == (2, 1, False)
    assert s.endpoint_auth_mode == "AADToken"
    assert s.enable_events is False
    assert s.tags == {"app": "tuneplane", "stack": "prod"}


def test_overrides():
    s = settings_for({
        "tuneplane:location": "swedencentral",
        "tuneplane:networkIsolation": "managed-vnet",
        "tuneplane:outboundFqdns": '["example.org"]',
        "tuneplane:endpointAuthMode": "Key",
        "tuneplane:endpointName": "my-endpoint",
        "tuneplane:tags": '{"team": "ml"}',
        "tuneplane:idleSecondsBeforeScaleDown": "120",
    })
    assert s.location == "swedencentral" and s.isolated
    assert s.outbound_fqdns == ("example.org",)
    assert s.endpoint_auth_mode == "Key" and s.endpoint_name == "my-endpoint"
    assert s.tags["team"] == "ml"
    assert s.idle_seconds_before_scale_down == 120


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "tuneplane:location"),
        ({"tuneplane:cpuMaxNodes": "many"}, "tuneplane:cpuMaxNodes"),
        ({"tuneplane:gpuMaxNodes": "0"}, "tuneplane:gpuMaxNodes"),
        ({"tuneplane:lowPriority": "sometimes"}, "tuneplane:lowPriority"),
        ({"tuneplane:networkIsolation": "private"}, "tuneplane:networkIsolation"),
        ({"tuneplane:endpointAuthMode": "Basic"}, "tuneplane:endpointAuthMode"),
        ({"tuneplane:endpointName": "1-starts-with-digit"}, "tuneplane:endpointName"),
        ({"tuneplane:trainingDataContainer": "Has_Upper"}, "tuneplane:trainingDataContainer"),
        ({"tuneplane:storageSku": "Standard_LRS"}, "tuneplane:storageSku"),
        ({"tuneplane:idleSecondsBeforeScaleDown": "5"}, "tuneplane:idleSecondsBeforeScaleDown"),
        ({"tuneplane:functionInstanceMemoryMb": "1000"}, "tuneplane:functionInstanceMemoryMb"),
        ({"tuneplane:outboundFqdns": '"pypi.org"'}, "tuneplane:outboundFqdns"),
        ({"tuneplane:filesContainer": "training-data"}, "tuneplane:filesContainer"),
    ],
)
def test_invalid_config_names_the_key(config, key):
    with pytest.raises(SettingError, match=key):
        settings_for({"azure-native:location": "eastus2", **config} if key != "tuneplane:location" else config)


def test_invalid_config_declares_nothing():
    with pytest.raises(SettingError, match="tuneplane:cpuMaxNodes"):
        run_program({"cpuMaxNodes": "-3"})


def test_example_stack_file_is_valid_and_secret_free():
    import yaml
    from infra_program import INFRA

    config = yaml.safe_load((INFRA.parent / "Pulumi.dev.yaml").read_text())["config"]
    assert not [k for k, v in config.items() if isinstance(v, dict) and "secure" in v]
    s = settings_for({k: str(v) for k, v in config.items()})
    assert s.location == "eastus2" and s.network_isolation == "public" and s.enable_events is False
    assert s.api_key is None


def test_api_key_becomes_a_secret_app_setting():
    program = program_for("events")
    settings = {s["name"]: s["value"] for s in program.one("web:WebApp").inputs["siteConfig"]["appSettings"]}
    assert settings["TUNEPLANE_API_KEY"] == "sk-test-123"
    # Registered as a Pulumi secret: encrypted in state, masked in previews.
    raw = program.one("web:WebApp").raw_inputs["siteConfig"]
    assert raw["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
    assert "sk-test-123" not in str(program.outputs)
