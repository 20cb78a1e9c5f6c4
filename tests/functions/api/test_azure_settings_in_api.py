"""Azure settings that shape what the API answers (stores on Azurite): the dry-run estimate prices
with TUNEPLANE_AZURE_PRICE_TABLE and the serverless tier, a bad price table is a 503 naming it, and
with TUNEPLANE_AZURE_TRAINING_DATA_CONTAINER set a retraining policy must watch that container."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.conftest import chat_jsonl

pytestmark = pytest.mark.azurite

KEY = "tp-azure-settings-key"
PRICES = {"Custom_X1": {"gpus": 1, "gpu_memory_gb": 48, "tflops_bf16": 1000, "price_per_hour": 0.5,
                        "spot_price_per_hour": 0.1}}


def _client(azurite, tmp_path, monkeypatch, **azure_env):  # noqa: F811
    from tuneplane.app import create_app
    from tuneplane.settings import Settings

    env = {"STORAGE_CONNECTION_STRING": azurite.connection_string, "TABLE_PREFIX": azurite.unique_name("s"),
           "FILES_CONTAINER": azurite.unique_name("s"), **azure_env}
    for name, value in env.items():
        monkeypatch.setenv(f"TUNEPLANE_AZURE_{name}", value)
    app = create_app(Settings(backend="azure", home=tmp_path, reconciler=False, api_key=KEY, inbox_scan_seconds=0))
    return TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {KEY}"})


def test_the_dry_run_prices_with_the_price_table_and_the_serverless_tier(azurite, tmp_path, monkeypatch):  # noqa: F811
    with _client(azurite, tmp_path, monkeypatch, PRICE_TABLE=json.dumps(PRICES), SERVERLESS_TIER="spot") as client:
        upload = client.post("/v1/files", data={"purpose": "fine-tune"},
                             files={"file": ("train.jsonl", chat_jsonl(20), "application/jsonl")})
        assert upload.status_code == 200, upload.text
        body = {"model": "SmolLM2-135M-Instruct", "training_file": upload.json()["id"], "dry_run": True}
        serverless = client.post("/v1/fine_tuning/jobs", json={**body, "compute": "serverless"}).json()["estimate"]
        assert serverless["instance_type"] == "Custom_X1" and serverless["tier"] == "spot"
        assert serverless["assumptions"]["price_per_instance_hour"] == 0.1
        # A cluster's nodes are not priced by the serverless queue tier.
        cluster = client.post("/v1/fine_tuning/jobs", json={**body, "compute": "gpu-cluster"}).json()["estimate"]
        assert cluster["tier"] == "standard" and cluster["assumptions"]["price_per_instance_hour"] == 0.5
        assert cluster["estimated_cost"]["amount"] == pytest.approx(serverless["estimated_cost"]["amount"] * 5, rel=1e-3)
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_a_bad_price_table_is_a_503_naming_it(azurite, tmp_path, monkeypatch):  # noqa: F811
    with _client(azurite, tmp_path, monkeypatch, PRICE_TABLE='{"Custom_X1": {"gpus": 0}}') as client:
        response = client.get("/v1/fine_tuning/jobs")
        assert response.status_code == 503
        assert response.json()["error"]["param"] == "TUNEPLANE_AZURE_PRICE_TABLE"
        assert "Custom_X1.gpus" in response.json()["error"]["message"]


def test_policies_must_watch_the_training_data_container(azurite, tmp_path, monkeypatch):  # noqa: F811
    container = azurite.unique_name("td")
    with _client(azurite, tmp_path, monkeypatch, TRAINING_DATA_CONTAINER=container) as client:
        policy = {"name": "nightly", "model": "SmolLM2-135M-Instruct", "promotion": None}
        refused = client.post("/v1/retraining_policies", json={**policy, "blob_prefix": {"container": "elsewhere", "path": "a/"}})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "blob_prefix.container" and container in refused.json()["error"]["message"]
        accepted = client.post("/v1/retraining_policies", json={**policy, "blob_prefix": {"container": container, "path": "a/"}})
        assert accepted.status_code == 200, accepted.text
        assert [p["name"] for p in client.get("/v1/retraining_policies").json()["data"]] == ["nightly"]
