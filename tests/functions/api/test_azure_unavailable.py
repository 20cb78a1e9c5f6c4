"""With the Azure stores (on Azurite), storage that refuses the control plane's credential makes the
API answer 503 in the OpenAI envelope, naming the setting to fix, never a traceback; and the dry run
of a job returns its estimate and stores nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.azurite import ACCOUNT, azurite  # noqa: F401  (session fixture)
from tests.conftest import chat_jsonl

pytestmark = pytest.mark.azurite


@pytest.fixture
def azure_app(azurite, tmp_path, monkeypatch):  # noqa: F811
    from tuneplane.app import create_app
    from tuneplane.backends.azure_config import AzureSettings
    from tuneplane.settings import Settings
    from tuneplane.stores.azure import build_azure_adapters

    env = {"TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "TUNEPLANE_AZURE_TABLE_PREFIX": azurite.unique_name("a"), "TUNEPLANE_AZURE_FILES_CONTAINER": azurite.unique_name("a")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    adapters = build_azure_adapters(None, AzureSettings())
    settings = Settings(backend="azure", home=tmp_path, reconciler=False, api_key="tp-azure-test-key", key_cache_seconds=60)
    app = create_app(settings, adapters=adapters)
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer tp-azure-test-key"}) as client:
        yield client, adapters


def _refuse_the_key(adapters) -> None:
    # The account key rotated under the running app: every later table call is refused (403).
    adapters.jobs._jobs.credential.update(ACCOUNT, "d3Jvbmcta2V5" * 8)


def test_a_refused_storage_credential_is_a_503_naming_the_setting(azure_app):
    client, adapters = azure_app
    assert client.get("/v1/fine_tuning/jobs").status_code == 200  # also caches the verified key
    _refuse_the_key(adapters)
    response = client.get("/v1/fine_tuning/jobs")
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    error = response.json()["error"]
    assert error["param"] == "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"
    assert "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING" in error["message"] and "Traceback" not in response.text
    assert error["type"] == "server_error" and error["code"] == "backend_misconfigured"


def test_a_refused_credential_during_authentication_is_a_503_too(azure_app, monkeypatch):
    client, adapters = azure_app
    _refuse_the_key(adapters)
    response = client.get("/v1/fine_tuning/jobs", headers={"Authorization": "Bearer tp-not-cached-key"})
    assert response.status_code == 503
    assert response.json()["error"]["param"] == "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"


def test_a_dry_run_returns_the_estimate_and_creates_nothing(azure_app):
    client, adapters = azure_app
    upload = client.post("/v1/files", data={"purpose": "fine-tune"},
                         files={"file": ("train.jsonl", chat_jsonl(20), "application/jsonl")})
    assert upload.status_code == 200, upload.text
    body = {"model": "SmolLM2-135M-Instruct", "training_file": upload.json()["id"], "compute": "serverless",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}
    dry = client.post("/v1/fine_tuning/jobs", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    estimate = dry.json()["estimate"]
    assert estimate["n_epochs"] == 3 and estimate["instance_type"] == "Standard_NC4as_T4_v3"
    assert estimate["gpu_hours"] > 0 and estimate["estimated_cost"]["currency"] == "USD"
    assert "Idempotent-Replayed" not in dry.headers
    assert adapters.jobs.list_jobs("default") == []  # nothing was created
    created = client.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200 and created.json()["estimate"] == estimate
    assert [j.id for j in adapters.jobs.list_jobs("default")] == [created.json()["id"]]
    assert adapters.jobs.get_job("default", created.json()["id"]).estimate == estimate


def test_a_missing_setting_at_start_up_is_a_503_naming_it(tmp_path, monkeypatch):
    from tuneplane.app import create_app
    from tuneplane.settings import Settings

    for name in ("STORAGE_CONNECTION_STRING", "TABLE_URL", "BLOB_URL"):
        monkeypatch.delenv(f"TUNEPLANE_AZURE_{name}", raising=False)
    app = create_app(Settings(backend="azure", home=tmp_path, reconciler=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/fine_tuning/jobs")):
            response = client.request(method, path)
            assert response.status_code == 503, (method, path)
            assert response.json()["error"]["param"] == "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"
