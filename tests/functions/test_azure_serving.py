"""Deployments, chat and webhooks with ``TUNEPLANE_BACKEND=azure``, through the real FastAPI app on
uvicorn with the official openai client: Table/Blob stores on Azurite, Azure ML as the mocked
MLClient of azure_ml_fakes (the cloud boundary), and a real local HTTP server standing in for the
managed online endpoint's scoring URI."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import uvicorn

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions.backends.azure_ml_fakes import mocked_ml_client, no_sleep_retry, not_found, settings

BASE = "SmolLM2-135M-Instruct"
JOB = "ftjob-0005f1a2b3c4d5e6f7a8b9c0"
MODEL = f"ft:{BASE}:default::{JOB}"
KEY = "tp-azure-serving-key"


class Scoring(BaseHTTPRequestHandler):
    """The endpoint's scoring server: refuses ``stream`` as score.py does, echoes the prompt."""

    calls: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"headers": dict(self.headers), "body": body})
        if body.get("stream"):
            status, payload = 400, {"error": {"message": "stream: call it without stream.", "type": "invalid_request_error",
                                              "param": "stream", "code": "invalid_value"}}
        elif not isinstance(body.get("temperature", 0), (int, float)):
            status, payload = 400, {"error": {"message": "temperature must be a number", "type": "invalid_request_error",
                                              "param": "temperature", "code": "invalid_type"}}
        else:
            status, payload = 200, {
                "id": "chatcmpl-stub1", "object": "chat.completion", "created": 1_760_000_000, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "echo: " + body["messages"][-1]["content"]}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(azurite, tmp_path_factory):  # noqa: F811
    from azure.ai.ml.entities import ManagedOnlineEndpoint, Model

    from tuneplane.app import create_app
    from tuneplane.backends.azure_config import AzureSettings
    from tuneplane.settings import Settings
    from tuneplane.stores.azure import AzureML, build_azure_adapters

    Scoring.calls = []
    scoring = ThreadingHTTPServer(("127.0.0.1", 0), Scoring)
    threading.Thread(target=scoring.serve_forever, daemon=True).start()

    env = {"TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "TUNEPLANE_AZURE_TABLE_PREFIX": azurite.unique_name("s"),
           "TUNEPLANE_AZURE_FILES_CONTAINER": azurite.unique_name("s")}
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    azure = settings(azurite.connection_string, env["TUNEPLANE_AZURE_FILES_CONTAINER"],
                     table_prefix=env["TUNEPLANE_AZURE_TABLE_PREFIX"])
    port = _free_port()
    home = tmp_path_factory.mktemp("home")
    config = Settings(backend="azure", home=home, port=port, api_key=KEY, key_cache_seconds=0, reconciler=False)
    adapters = build_azure_adapters(config, azure)
    out = f"tuneplane-runs/{JOB}/model/"
    adapters.contents.put_bytes(out + "adapter_config.json", json.dumps({"r": 8, "base_model_name_or_path": BASE}).encode())
    adapters.contents.put_bytes(out + "adapter_model.safetensors", b"weights")

    ml = mocked_ml_client()
    source = f"azureml://jobs/{JOB}/outputs/model"
    registered = Model(name="m", version="1", path=source, tags={
        "tuneplane.project": "default", "tuneplane.model": MODEL, "tuneplane.base_model": BASE, "tuneplane.source": source})

    def get_model(name, version=None):
        if name.startswith("ft-"):  # model_asset_name of an ft: name
            return registered
        raise not_found()

    ml.models.get.side_effect = get_model
    ml.online_deployments.get.side_effect = not_found()
    endpoint = ManagedOnlineEndpoint(name="tuneplane-endpoint", traffic={})
    endpoint._scoring_uri = f"http://127.0.0.1:{scoring.server_address[1]}/score"
    ml.online_endpoints.get.return_value = endpoint
    adapters.azure_ml = AzureML(azure, adapters.contents, ml, retry=no_sleep_retry(), token_provider=lambda: "entra-token")

    app = create_app(config, adapters)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    client = openai.OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=30)
    yield {"app": app, "ml": ml, "client": client, "url": f"http://127.0.0.1:{port}", "home": home,
           "adapters": adapters, "config": config}
    server.should_exit = True
    thread.join(timeout=30)
    scoring.shutdown()
    scoring.server_close()
    adapters.close()
    patch.undo()


def _api(world) -> httpx.Client:
    return httpx.Client(base_url=world["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def test_the_azure_backend_serves_through_azure_ml_and_keeps_no_local_state(world):
    from tuneplane.backends.azure_ml_deploy import AzureDeployer
    from tuneplane.stores.azure import build_azure_context
    from tuneplane.stores.azure_webhooks import AzureWebhookStore

    serving = world["app"].state.serving
    assert isinstance(serving.deployer, AzureDeployer) and isinstance(serving.webhooks, AzureWebhookStore)
    # The reconciler deploys through the same deployer the API uses.
    context = build_azure_context(world["config"], world["adapters"])
    assert context.deployer is serving.deployer and context.registry is serving.registry
    # Nothing under TUNEPLANE_HOME (ephemeral on a Function App): no deployments dir, no webhooks.db.
    assert not (world["home"] / "deployments").exists() and not (world["home"] / "webhooks.db").exists()


def test_deploy_list_chat_stream_and_undeploy_a_fine_tuned_model(world):
    ml, client = world["ml"], world["client"]
    with _api(world) as api:
        # A catalog base model is refused clearly: the endpoint serves adapters only.
        refused = api.post("/v1/deployments", json={"model": BASE})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"

        created = api.post("/v1/deployments", json={"model": MODEL})
        assert created.status_code == 200, created.text
        assert created.json()["status"] == "deploying"
        entity = ml.online_deployments.begin_create_or_update.call_args.args[0]
        assert json.loads(entity.environment_variables["TUNEPLANE_ADAPTER_SOURCES"]) == {
            MODEL: f"azureml://jobs/{JOB}/outputs/model"}
        ml.online_deployments.get.side_effect = None
        ml.online_deployments.get.return_value = entity

        # Still provisioning: chat says so with a 409, not a hang or a 500.
        with pytest.raises(openai.ConflictError) as busy:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert busy.value.code == "deployment_in_progress"

        entity._provisioning_state = "Succeeded"
        ml.online_deployments.list.return_value = [entity]
        listed = api.get("/v1/deployments").json()["data"]
        assert [(d["model"], d["status"]) for d in listed] == [(MODEL, "ready")]
        assert api.get(f"/v1/deployments/{MODEL}").json()["deployment"] == entity.name

    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "echo: hello" and answer.usage.total_tokens == 5
    call = Scoring.calls[-1]
    assert call["headers"]["Authorization"] == "Bearer entra-token"
    assert call["headers"]["azureml-model-deployment"] == entity.name and call["body"]["model"] == MODEL

    # Streaming: the deployment is called without it and the answer arrives as SSE chunks.
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream me"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "stream" not in Scoring.calls[-1]["body"] and "stream_options" not in Scoring.calls[-1]["body"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "length"]
    assert chunks[-1].usage.total_tokens == 5 and {c.id for c in chunks} == {"chatcmpl-stub1"}

    # The Azure OpenAI deployment-scoped route goes the same way; bad sampling fields pass through.
    azure = openai.AzureOpenAI(azure_endpoint=world["url"], api_key=KEY, api_version="2024-10-21", max_retries=0)
    routed = azure.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "az"}])
    assert routed.choices[0].message.content == "echo: az"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"temperature": "hot"})
    assert bad.value.body["param"] == "temperature"

    # Not deployed here: another project's name, and a base model (not served on Azure).
    for name in (f"ft:{BASE}:other::{JOB}", BASE):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])

    ml.online_endpoints.get.return_value.traffic = {entity.name: 100}
    with _api(world) as api:
        deleted = api.delete(f"/v1/deployments/{MODEL}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    ml.online_deployments.begin_delete.assert_called_once_with(name=entity.name, endpoint_name="tuneplane-endpoint")


def test_webhook_endpoints_are_kept_in_table_storage(world):
    from tuneplane.stores.azure_account import StorageAccount
    from tuneplane.stores.azure_webhooks import AzureWebhookStore

    with _api(world) as api:
        made = api.post("/v1/webhook_endpoints", json={"name": "ci", "url": "http://127.0.0.1:9/hook",
                                                        "event_types": ["fine_tuning.job.succeeded"]})
        assert made.status_code in (200, 201), made.text
    # Another process (the next Function App instance) reads it from the same table.
    other = AzureWebhookStore(StorageAccount(connection_string=os.environ["TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING"]),
                              os.environ["TUNEPLANE_AZURE_TABLE_PREFIX"])
    try:
        assert other.get_endpoint("default", made.json()["id"])["url"] == "http://127.0.0.1:9/hook"
    finally:
        other.close()


PROBE = """
import json, sys
from starlette.testclient import TestClient
from tuneplane.app import create_app
from tuneplane.settings import Settings

app = create_app(Settings(backend="azure", home=sys.argv[1], api_key="k", reconciler=False))
with TestClient(app) as client:
    auth = {"Authorization": "Bearer k"}
    listed = client.get("/v1/deployments", headers=auth)
    chat = client.post("/v1/chat/completions", headers=auth, json={"model": "ft:b:default::ftjob-1", "messages": [{"role": "user", "content": "x"}]})
heavy = [m for m in ("torch", "transformers", "peft", "azure.ai.ml") if m in sys.modules]
print(json.dumps({"heavy": heavy, "listed": [listed.status_code, listed.json()], "chat": [chat.status_code, chat.json()]}))
"""


def test_without_azure_ml_settings_deployments_and_chat_are_503s_naming_them_and_nothing_heavy_loads(azurite, tmp_path):  # noqa: F811
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TUNEPLANE_INBOX_SCAN_SECONDS": "0",
           "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "TUNEPLANE_AZURE_TABLE_PREFIX": azurite.unique_name("p"), "TUNEPLANE_AZURE_FILES_CONTAINER": azurite.unique_name("p")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    (status, body), (chat_status, chat_body) = result["listed"], result["chat"]
    assert status == 503 and "TUNEPLANE_AZURE_SUBSCRIPTION_ID" in body["error"]["message"]
    assert chat_status == 503 and "TUNEPLANE_AZURE_SUBSCRIPTION_ID" in chat_body["error"]["message"]
