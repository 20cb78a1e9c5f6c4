"""infra/__main__.py (what `pulumi up` runs) exports the documented stack outputs."""

from __future__ import annotations

import runpy

import pulumi
from infra_program import INFRA, AzureMocks

EXPECTED_OUTPUTS = {
    "apiBaseUrl", "resourceGroupName", "workspaceName", "cpuClusterName", "gpuClusterName", "endpointName",
    "functionAppName", "dataStorageAccountName", "functionStorageAccountName", "filesContainerName",
    "trainingDataContainerName", "deploymentContainerName", "deadLetterContainerName", "eventsEnabled",
    "datastoreName",
}


def test_main_exports_the_stack_outputs(monkeypatch):
    exported: dict[str, object] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    pulumi.runtime.set_all_config({"azure-native:location": "eastus2"})
    mocks = AzureMocks()
    pulumi.runtime.set_mocks(mocks, project="tuneplane", stack="dev", preview=False)
    resolved: dict[str, object] = {}

    @pulumi.runtime.test
    def body():
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
        return pulumi.Output.from_input(exported).apply(resolved.update)

    body()
    assert set(resolved) == EXPECTED_OUTPUTS
    assert resolved["apiBaseUrl"].startswith("https://") and resolved["apiBaseUrl"].endswith(".azurewebsites.net/v1")
    assert len(mocks.resources) == 37  # with the files datastore


def test_pulumi_project_file_points_at_infra():
    text = (INFRA.parent / "Pulumi.yaml").read_text()
    assert "name: tuneplane" in text
    assert "main: infra/" in text
    assert "name: python" in text and "virtualenv: .venv" in text
