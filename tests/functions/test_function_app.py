"""The Function App as the Functions host sees it: indexed with the real azure-functions library,
invoked through its ASGI function with ``func.HttpRequest``, its timer and its Event Grid triggers."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import tomllib

import azure.functions as func
from azure.functions.timer import TimerRequest
import pytest

from tests.conftest import chat_jsonl
from tests.functions.function_app_harness import API_KEY, FUNCTIONS_DIR, ROOT, load

HEAVY = ("torch", "transformers", "peft")


@pytest.fixture(scope="module")
def loaded():
    return load()


def _trigger(bindings: dict, name: str) -> dict:
    triggers = [b for b in bindings[name]["bindings"] if b["direction"] == "IN" and b["type"].endswith("Trigger")]
    assert len(triggers) == 1, bindings[name]
    return triggers[0]


def test_http_binding_serves_every_path_anonymously(loaded):
    http = _trigger(loaded.bindings, "http_app_func")
    assert http["type"] == "httpTrigger"
    assert http["route"] == "/{*route}"
    # The API checks its own keys (Bearer / api-key); a function key would be a second secret.
    assert http["authLevel"] == "ANONYMOUS"
    assert {"GET", "POST", "DELETE"} <= set(http["methods"])
    assert any(b["type"] == "http" and b["direction"] == "OUT" for b in loaded.bindings["http_app_func"]["bindings"])


def test_timer_runs_every_minute(loaded):
    timer = _trigger(loaded.bindings, "reconcile")
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "0 */1 * * * *"
    assert timer["runOnStartup"] is False


def test_event_grid_triggers(loaded):
    # infra's Event Grid subscription targets <app>/functions/training_blob_created by name.
    assert _trigger(loaded.bindings, "training_blob_created")["type"] == "eventGridTrigger"
    assert _trigger(loaded.bindings, "azureml_run_completed")["type"] == "eventGridTrigger"
    assert set(loaded.bindings) == {"http_app_func", "reconcile", "training_blob_created", "azureml_run_completed"}
    from tuneplane.retraining import BLOB_CREATED

    assert loaded.module.BLOB_CREATED == BLOB_CREATED


def test_host_json_keeps_local_paths():
    host = json.loads((FUNCTIONS_DIR / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_requirements_are_pinned_light_and_match_pyproject():
    lines = [line.split("#")[0].strip() for line in (FUNCTIONS_DIR / "requirements.txt").read_text().splitlines()]
    pins = dict(line.split("==") for line in lines if line)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) and version for name, version in pins.items())
    assert not {"torch", "transformers", "peft", "accelerate", "trl", "deepspeed", "bitsandbytes"} & set(pins)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["functions"]
    pyproject = dict(item.split("==") for item in extra)
    for name, version in pins.items():
        assert pyproject.get(name) == version, f"{name}=={version} differs from pyproject.toml"
    assert "azure-functions" in pins and "fastapi" in pins


def test_local_settings_example_names_every_infra_app_setting():
    example = json.loads((FUNCTIONS_DIR / "local.settings.json.example").read_text())["Values"]
    infra_source = (ROOT / "infra" / "tuneplane_infra" / "functions.py").read_text()
    infra_settings = set(re.findall(r'"(TUNEPLANE_[A-Z_]+)"', infra_source))
    assert infra_settings and infra_settings <= set(example)
    assert example["FUNCTIONS_WORKER_RUNTIME"] == "python"


PROBE = """
import asyncio, json, sys
import function_app
after_import = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith('azure.ai.ml'))
import azure.functions as func
from azure.functions.timer import TimerRequest
handler = next(f for f in function_app.app.get_functions() if f.get_function_name() == 'http_app_func')
response = asyncio.run(handler.get_user_function()(func.HttpRequest('GET', 'http://localhost/health', body=b''), None))
after_request = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith('azure.ai.ml'))
print(json.dumps({{'import': after_import, 'request': after_request, 'status': response.status_code,
                   'fastapi_at_import': 'fastapi' in sys.modules}}))
"""


def test_cold_start_loads_no_heavy_module(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TUNEPLANE_HOME": str(tmp_path), "TUNEPLANE_INBOX_SCAN_SECONDS": "0",
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], cwd=FUNCTIONS_DIR, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["import"] == [] and result["request"] == []
    assert result["status"] == 200


def _multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "tuneplane-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/jsonl\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_create_file_create_job_get_job_through_the_asgi_function(loaded):
    body, content_type = _multipart({"purpose": "fine-tune"}, "train.jsonl", chat_jsonl(12))
    created = loaded.http("POST", "/v1/files", body=body, headers={"Content-Type": content_type})
    assert created.status_code == 200, created.get_body()
    file = json.loads(created.get_body())
    assert file["object"] == "file" and file["purpose"] == "fine-tune" and file["bytes"] == len(chat_jsonl(12))

    job_body = json.dumps({"model": "tiny-random-llama", "training_file": file["id"], "suffix": "fa"}).encode()
    response = loaded.http("POST", "/v1/fine_tuning/jobs", body=job_body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.get_body()
    job = json.loads(response.get_body())
    assert job["object"] == "fine_tuning.job" and job["training_file"] == file["id"] and job["status"] == "queued"

    fetched = loaded.http("GET", f"/v1/fine_tuning/jobs/{job['id']}")
    assert fetched.status_code == 200
    assert json.loads(fetched.get_body())["id"] == job["id"]
    # The Azure OpenAI path of the same operation, as the host routes it with routePrefix "".
    azure_path = loaded.http("GET", f"/openai/fine_tuning/jobs/{job['id']}?api-version=2024-10-21")
    assert azure_path.status_code == 200


def test_bad_input_and_missing_key_through_the_asgi_function(loaded):
    unauthenticated = loaded.http("GET", "/v1/fine_tuning/jobs", key=None)
    assert unauthenticated.status_code == 401
    bad = loaded.http("POST", "/v1/fine_tuning/jobs", body=b'{"model": "tiny-random-llama", "training_file": "file-nope"}',
                      headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    assert json.loads(bad.get_body())["error"]["param"] == "training_file"
    missing = loaded.http("GET", "/v1/fine_tuning/jobs/ftjob-missing")
    assert missing.status_code == 404


def _create_job_on(loaded, compute: str) -> dict:
    body, content_type = _multipart({"purpose": "fine-tune"}, "t.jsonl", chat_jsonl(10))
    file = json.loads(loaded.http("POST", "/v1/files", body=body, headers={"Content-Type": content_type}).get_body())
    response = loaded.http("POST", "/v1/fine_tuning/jobs", headers={"Content-Type": "application/json"},
                           body=json.dumps({"model": "tiny-random-llama", "training_file": file["id"], "compute": compute}).encode())
    assert response.status_code == 200, response.get_body()
    return json.loads(response.get_body())


def _status(loaded, job_id: str) -> dict:
    return json.loads(loaded.http("GET", f"/v1/fine_tuning/jobs/{job_id}").get_body())


def _cancel_unfinished(loaded) -> None:
    """Jobs earlier tests left queued would start a real trainer on a pass: cancel them first (a job
    that never ran is cancelled at once, by the API)."""
    for job in loaded.state.adapters.jobs.list_unfinished_jobs():
        if job.compute == "local":
            assert loaded.http("POST", f"/v1/fine_tuning/jobs/{job.id}/cancel").status_code == 200


def test_timer_tick_runs_a_reconciler_pass(loaded):
    _cancel_unfinished(loaded)
    # No backend serves this compute here, so one pass fails the job without starting a trainer.
    job = _create_job_on(loaded, "no-such-cluster")
    loaded.user_function("reconcile")(TimerRequest(past_due=True))
    after = _status(loaded, job["id"])
    assert after["status"] == "failed"
    assert after["error"]["param"] == "compute"


def test_azure_ml_run_completed_nudges_the_reconciler(loaded):
    _cancel_unfinished(loaded)
    job = _create_job_on(loaded, "another-missing-cluster")
    unrelated = func.EventGridEvent(id="e-1", data={}, topic="/t", subject="jobs/x", data_version="1",
                                    event_type="Microsoft.MachineLearningServices.RunStatusChanged",
                                    event_time=datetime.datetime.now(datetime.timezone.utc))
    loaded.user_function("azureml_run_completed")(unrelated)
    assert _status(loaded, job["id"])["status"] == "queued"
    completed = func.EventGridEvent(id="e-2", data={"runId": "x"}, topic="/t", subject="jobs/x", data_version="1",
                                    event_type="Microsoft.MachineLearningServices.RunCompleted",
                                    event_time=datetime.datetime.now(datetime.timezone.utc))
    loaded.user_function("azureml_run_completed")(completed)
    assert _status(loaded, job["id"])["status"] == "failed"


def test_api_key_is_the_one_from_settings(loaded):
    assert loaded.state.settings.api_key == API_KEY
