"""The Function App's triggers when the control plane cannot start (TUNEPLANE_BACKEND=azure with a
setting missing): the API answers 503, and the timer and Event Grid handlers log which setting is
wrong instead of failing with an AttributeError on the placeholder app."""

from __future__ import annotations

import datetime
import logging
import os

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from tests.functions.function_app_harness import load
from tuneplane.ports import BackendMisconfigured

MISSING = "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"


@pytest.fixture
def misconfigured(monkeypatch, tmp_path):
    loaded = load()
    for name in list(os.environ):
        if name.startswith("TUNEPLANE_AZURE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TUNEPLANE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEPLANE_BACKEND", "azure")
    plane = loaded.module.ControlPlane()
    assert plane.api.state.unavailable.setting == MISSING  # built now, while the environment is broken
    monkeypatch.setattr(loaded.module, "control_plane", plane)
    return loaded


def test_the_api_answers_503_naming_the_setting(misconfigured):
    from fastapi.testclient import TestClient

    response = TestClient(misconfigured.module.control_plane).get("/v1/fine_tuning/jobs")
    assert response.status_code == 503
    assert MISSING in response.text


def test_timer_and_run_completed_log_the_setting(misconfigured, caplog):
    caplog.set_level(logging.ERROR, logger="tuneplane.functions")
    assert misconfigured.user_function("reconcile")(TimerRequest(past_due=False)) is None
    completed = func.EventGridEvent(id="e-1", data={"runId": "x"}, topic="/t", subject="jobs/x", data_version="1",
                                    event_type="Microsoft.MachineLearningServices.RunCompleted",
                                    event_time=datetime.datetime.now(datetime.timezone.utc))
    misconfigured.user_function("azureml_run_completed")(completed)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(MISSING in message for message in errors)


def test_blob_created_logs_and_raises_the_setting_so_event_grid_retries(misconfigured, caplog):
    caplog.set_level(logging.ERROR, logger="tuneplane.functions")
    event = func.EventGridEvent(
        id="e-2", topic="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a",
        subject="/blobServices/default/containers/training-data/blobs/p/new.jsonl",
        event_type="Microsoft.Storage.BlobCreated", event_time=datetime.datetime.now(datetime.timezone.utc),
        data_version="", data={"api": "PutBlob", "eTag": "0x8D01", "url": "https://a.blob.core.windows.net/x"},
    )
    with pytest.raises(BackendMisconfigured) as raised:
        misconfigured.user_function("training_blob_created")(event)
    assert raised.value.setting == MISSING
    assert any(MISSING in r.getMessage() and "e-2" in r.getMessage() for r in caplog.records)
