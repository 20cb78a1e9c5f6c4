"""The Function App's app settings are exactly what the control plane reads: every TUNEPLANE_*
name infra emits is a field of the control plane's settings models, every value validates there,
and every setting the Azure backend requires is emitted. (Tests may import functions/; the infra
program itself never does.)"""

from __future__ import annotations

import pytest

from tuneplane.backends.azure_config import ENV_PREFIX, AzureSettings
from tuneplane.settings import Settings

# What the control plane cannot run without in Azure: a writable home, and what AzureSettings.require,
# storage_account and ml_client ask for, the datastore and the endpoint.
REQUIRED = {"TUNEPLANE_BACKEND", "TUNEPLANE_HOME", "TUNEPLANE_AZURE_SUBSCRIPTION_ID", "TUNEPLANE_AZURE_RESOURCE_GROUP",
            "TUNEPLANE_AZURE_WORKSPACE", "TUNEPLANE_AZURE_BLOB_URL", "TUNEPLANE_AZURE_TABLE_URL",
            "TUNEPLANE_AZURE_FILES_CONTAINER", "TUNEPLANE_AZURE_DATASTORE", "TUNEPLANE_AZURE_ENDPOINT"}


def control_plane_names() -> dict[str, tuple[type, str]]:
    names = {f"TUNEPLANE_{field.upper()}": (Settings, field) for field in Settings.model_fields}
    names.update({f"{ENV_PREFIX}{field.upper()}": (AzureSettings, field) for field in AzureSettings.model_fields})
    return names


def app_settings(program) -> dict[str, str]:
    site = program.one("web:WebApp").inputs["siteConfig"]
    return {s["name"]: s["value"] for s in site["appSettings"] if s["name"].startswith("TUNEPLANE_")}


@pytest.mark.parametrize("variant", ["default", "events"])
def test_every_emitted_setting_is_read_by_the_control_plane(variant, monkeypatch):
    from infra_program import program_for

    emitted = app_settings(program_for(variant))
    known = control_plane_names()
    assert not sorted(set(emitted) - set(known)), "infra sets names the control plane never reads"
    assert REQUIRED <= set(emitted)
    # Each value as the Function App would see it validates in the control plane's models.
    for name in list(known):
        monkeypatch.delenv(name, raising=False)
    for name, value in emitted.items():
        monkeypatch.setenv(name, str(value))
    models = {Settings: Settings(), AzureSettings: AzureSettings()}
    for name, value in emitted.items():
        model, field = known[name]
        parsed = getattr(models[model], field)
        if field == "endpoint_auth_mode":
            assert parsed == "aad_token"
        else:
            assert str(parsed) == str(value), name
    assert models[Settings].backend == "azure"


@pytest.mark.parametrize(("arm", "ours"), [("AADToken", "aad_token"), ("Key", "key"), ("AMLToken", "aml_token")])
def test_every_endpoint_auth_mode_is_one_the_control_plane_accepts(arm, ours):
    from tuneplane_infra.functions import ENDPOINT_AUTH_MODES

    assert AzureSettings(endpoint_auth_mode=ENDPOINT_AUTH_MODES[arm]).endpoint_auth_mode == ours
    assert AzureSettings(endpoint_auth_mode=arm).endpoint_auth_mode == ours


def test_the_clusters_and_container_infra_names_are_used(default_program):
    azure = AzureSettings(**{known: value for name, value in app_settings(default_program).items()
                             if (known := name.removeprefix(ENV_PREFIX).lower()) in AzureSettings.model_fields})
    assert azure.cluster_for("cpu") == default_program.outputs["cpuClusterName"]
    assert azure.cluster_for("gpu") == default_program.outputs["gpuClusterName"]
    assert azure.cluster_for("my-cluster") == "my-cluster"
    assert azure.training_data_container == default_program.outputs["trainingDataContainerName"]
    assert azure.datastore == default_program.outputs["datastoreName"]
