"""Model registration and online deployment on Azure ML: the exact entities passed to
``models.create_or_update`` and ``online_deployments.begin_create_or_update`` (validated by
azure-ai-ml's schema), adapter bundles on a real Azurite, and the scoring call over real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions.backends.azure_ml_fakes import http_error, mocked_ml_client, no_sleep_retry, not_found, settings
from tuneplane.backends.azure_ml_deploy import (
    SCORING_SCRIPT,
    AzureDeployer,
    AzureModelRegistry,
    deployment_name,
    model_asset_name,
)
from tuneplane.ports import Deployer, ModelRegistry, PermanentBackendError
from tuneplane.stores.azure_account import StorageAccount
from tuneplane.stores.azure_blob import AzureBlobContentStore

BASE = "SmolLM2-135M-Instruct"
JOB_A, JOB_B = "ftjob-0005f1a2b3c4d5e6f7a8b9c0", "ftjob-0005f1a2b3c4d5e6f7a8b9d0"
MODEL_A, MODEL_B = f"ft:{BASE}:proj-a::{JOB_A}", f"ft:{BASE}:proj-a:v2:{JOB_B}"


@pytest.fixture
def ml():
    client = mocked_ml_client()
    client.models.get.side_effect = not_found()
    client.online_deployments.get.side_effect = not_found()
    return client


@pytest.fixture
def contents(azurite):  # noqa: F811
    store = AzureBlobContentStore(StorageAccount(connection_string=azurite.connection_string), azurite.unique_name("c"))
    for job, rank in ((JOB_A, 8), (JOB_B, 16)):
        out = f"tuneplane-runs/{job}/model/"
        store.put_bytes(out + "adapter_config.json", json.dumps({"r": rank, "base_model_name_or_path": BASE}).encode())
        store.put_bytes(out + "adapter_model.safetensors", b"weights-" + job.encode())
        store.put_bytes(out + "events.jsonl", b"{}\n")
        store.put_bytes(out + "checkpoints/checkpoint-5/checkpoint.json", b"{}")
    return store


@pytest.fixture
def deployer(ml, contents, azurite):  # noqa: F811
    config = settings(azurite.connection_string, contents._container.container_name)
    return AzureDeployer(ml, contents, config, retry=no_sleep_retry(), token_provider=lambda: "entra-token")


def test_adapters_satisfy_the_ports(ml, deployer, azurite):  # noqa: F811
    assert isinstance(deployer, Deployer)
    assert isinstance(AzureModelRegistry(ml, settings(azurite.connection_string, "x")), ModelRegistry)


def test_register_uses_the_job_output_with_lineage_tags_and_is_idempotent(ml, azurite):  # noqa: F811
    registry = AzureModelRegistry(ml, settings(azurite.connection_string, "x"), retry=no_sleep_retry())
    ml.models.create_or_update.side_effect = lambda model: model
    entry = registry.register(project="proj-a", name=MODEL_A, source_uri=f"azureml://jobs/{JOB_A}/outputs/model",
                              base_model=BASE, tags={"tuneplane.job": JOB_A})
    model = ml.models.create_or_update.call_args.args[0]
    assert model.name == model_asset_name(MODEL_A) and model.version == "1" and model.type == "custom_model"
    assert model.path == f"azureml://jobs/{JOB_A}/outputs/model"
    assert model.tags == {"tuneplane.job": JOB_A, "tuneplane.project": "proj-a", "tuneplane.model": MODEL_A,
                          "tuneplane.base_model": BASE, "tuneplane.source": f"azureml://jobs/{JOB_A}/outputs/model"}
    assert model._to_dict()["path"] == model.path
    model._to_rest_object()
    assert entry["id"] == MODEL_A and entry["project"] == "proj-a" and entry["asset"] == f"azureml:{model.name}:1"
    ml.models.get.side_effect = None
    ml.models.get.return_value = model
    again = registry.register(project="proj-a", name=MODEL_A, source_uri=f"azureml://jobs/{JOB_A}/outputs/model",
                              base_model=BASE, tags={})
    assert again == entry and ml.models.create_or_update.call_count == 1
    assert registry.get("proj-a", MODEL_A) == entry
    assert registry.get("proj-b", MODEL_A) is None  # another project's model is missing


def test_deploy_builds_one_deployment_per_base_serving_every_adapter(ml, deployer, contents):
    first = deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    assert first["status"] == "deploying" and first["deployment"] == deployment_name(BASE)
    entity = ml.online_deployments.begin_create_or_update.call_args.args[0]
    assert entity.name == deployment_name(BASE) and entity.endpoint_name == "tuneplane-endpoint"
    assert entity.code_configuration.scoring_script == SCORING_SCRIPT
    assert entity.instance_type == "Standard_NC24ads_A100_v4"
    assert entity.environment_variables["TUNEPLANE_MODEL_NAME"] == MODEL_A
    assert entity.environment_variables["TUNEPLANE_BASE_MODEL"] == BASE
    assert json.loads(entity.environment_variables["TUNEPLANE_ADAPTERS"]) == {}
    as_dict = entity._to_dict()
    assert as_dict["model"]["path"].startswith("azureml://datastores/tuneplanefiles/paths/tuneplane-deployments/")
    entity._to_rest_object(location="westeurope")
    folder = as_dict["model"]["path"].split("/paths/", 1)[1]
    assert contents.read_bytes(folder + "adapter_model.safetensors") == b"weights-" + JOB_A.encode()
    assert not contents.exists(folder + "events.jsonl") and contents.list_keys(folder + "checkpoints/") == []

    # The second adapter on the same base joins the same deployment.
    entity._provisioning_state = "Succeeded"
    ml.online_deployments.get.side_effect = None
    ml.online_deployments.get.return_value = entity
    deployer.deploy(project="proj-a", model=MODEL_B, base_model=BASE, source_uri=f"azureml://jobs/{JOB_B}/outputs/model")
    second = ml.online_deployments.begin_create_or_update.call_args.args[0]
    assert second.name == entity.name
    assert json.loads(second.environment_variables["TUNEPLANE_ADAPTERS"]) == {MODEL_B: "adapters/1"}
    folder2 = second._to_dict()["model"]["path"].split("/paths/", 1)[1]
    assert folder2 != folder
    assert contents.read_bytes(folder2 + "adapters/1/adapter_model.safetensors") == b"weights-" + JOB_B.encode()
    # Nothing was ready yet: the endpoint was not touched.
    ml.online_endpoints.begin_create_or_update.assert_not_called()


def _endpoint(traffic):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name="tuneplane-endpoint", auth_mode="aad_token", traffic=dict(traffic),
                                 description="owned by Pulumi", tags={"owner": "pulumi"})


def test_a_ready_deployment_gets_traffic_only_when_none_has_any(ml, deployer):
    deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    entity = ml.online_deployments.begin_create_or_update.call_args.args[0]
    entity._provisioning_state = "Succeeded"
    ml.online_deployments.get.side_effect = None
    ml.online_deployments.get.return_value = entity
    ml.online_endpoints.get.return_value = _endpoint({})
    assert deployer.status("proj-a", MODEL_A)["status"] == "ready"
    written = ml.online_endpoints.begin_create_or_update.call_args.args[0]
    assert written.traffic == {entity.name: 100}
    assert (written.auth_mode, written.description, written.tags) == ("aad_token", "owned by Pulumi", {"owner": "pulumi"})
    written._to_dict()
    assert written._to_rest_online_endpoint(location="westeurope").properties.traffic == {entity.name: 100}
    ml.online_endpoints.get.return_value = _endpoint({"tp-other-123456": 100})
    deployer.status("proj-a", MODEL_A)
    assert ml.online_endpoints.begin_create_or_update.call_count == 1  # someone has traffic: left alone


def test_deploy_is_idempotent_and_status_follows_provisioning(ml, deployer):
    ml.online_endpoints.get.return_value = _endpoint({"tp-other-123456": 100})
    deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    entity = ml.online_deployments.begin_create_or_update.call_args.args[0]
    ml.online_deployments.get.side_effect = None
    ml.online_deployments.get.return_value = entity
    entity._provisioning_state = "Updating"
    assert deployer.status("proj-a", MODEL_A)["status"] == "deploying"
    entity._provisioning_state = "Succeeded"
    again = deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    assert again["status"] == "ready" and ml.online_deployments.begin_create_or_update.call_count == 1
    assert deployer.status("proj-b", MODEL_A) is None
    assert deployer.status("proj-a", MODEL_B) is None


def test_undeploy_removes_an_adapter_then_the_deployment(ml, deployer):
    deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    ml.online_deployments.get.side_effect = None
    ml.online_deployments.get.return_value = ml.online_deployments.begin_create_or_update.call_args.args[0]
    deployer.deploy(project="proj-a", model=MODEL_B, base_model=BASE, source_uri=f"azureml://jobs/{JOB_B}/outputs/model")
    ml.online_deployments.get.return_value = ml.online_deployments.begin_create_or_update.call_args.args[0]
    assert deployer.undeploy("proj-a", MODEL_A) is True
    remaining = ml.online_deployments.begin_create_or_update.call_args.args[0]
    assert remaining.environment_variables["TUNEPLANE_MODEL_NAME"] == MODEL_B
    ml.online_deployments.get.return_value = remaining
    ml.online_endpoints.get.return_value = _endpoint({deployment_name(BASE): 100})
    assert deployer.undeploy("proj-a", MODEL_B) is True
    assert ml.online_endpoints.begin_create_or_update.call_args.args[0].traffic == {}  # left the split first
    ml.online_deployments.begin_delete.assert_called_once_with(name=deployment_name(BASE), endpoint_name="tuneplane-endpoint")
    assert deployer.undeploy("proj-b", MODEL_B) is False


def test_a_job_output_without_an_adapter_is_refused(ml, deployer, contents):
    contents.delete(f"tuneplane-runs/{JOB_A}/model/adapter_config.json")
    with pytest.raises(PermanentBackendError) as caught:
        deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    assert caught.value.code == "not_an_adapter"
    ml.online_deployments.begin_create_or_update.assert_not_called()


class _Scoring(BaseHTTPRequestHandler):
    calls: list[dict] = []
    fail_first = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"headers": dict(self.headers), "body": body})
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        payload = json.dumps({"object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scoring_server():
    _Scoring.calls, _Scoring.fail_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scoring)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()


def test_chat_calls_the_deployment_with_an_entra_token(ml, deployer, scoring_server):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    ml.online_endpoints.get.return_value = ManagedOnlineEndpoint(name="tuneplane-endpoint")
    ml.online_endpoints.get.return_value._scoring_uri = scoring_server
    _Scoring.fail_first = 1  # one 503, retried
    status, body = deployer.chat("proj-a", MODEL_A, {"messages": [{"role": "user", "content": "hello"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
    last = _Scoring.calls[-1]
    assert len(_Scoring.calls) == 2
    assert last["headers"]["Authorization"] == "Bearer entra-token"
    assert last["headers"]["azureml-model-deployment"] == deployment_name(BASE)
    assert last["body"]["model"] == MODEL_A


def test_chat_with_the_endpoint_key(ml, contents, azurite, scoring_server):  # noqa: F811
    from azure.ai.ml.entities import EndpointAuthKeys, ManagedOnlineEndpoint

    config = settings(azurite.connection_string, contents._container.container_name, endpoint_auth_mode="key")
    deployer = AzureDeployer(ml, contents, config, retry=no_sleep_retry())
    ml.online_endpoints.get.return_value = ManagedOnlineEndpoint(name="tuneplane-endpoint")
    ml.online_endpoints.get.return_value._scoring_uri = scoring_server
    ml.online_endpoints.get_keys.return_value = EndpointAuthKeys(primary_key="k1", secondary_key="k2")
    status, _ = deployer.chat("proj-a", MODEL_A, {"messages": []})
    assert status == 200 and _Scoring.calls[-1]["headers"]["Authorization"] == "Bearer k1"
    ml.online_endpoints.get_keys.assert_called_once_with("tuneplane-endpoint")


def test_chat_with_an_azure_ml_token(ml, contents, azurite, scoring_server):  # noqa: F811
    from azure.ai.ml.entities import EndpointAuthToken, ManagedOnlineEndpoint

    # Infra's endpointAuthMode AMLToken reaches the control plane as aml_token (either spelling).
    config = settings(azurite.connection_string, contents._container.container_name, endpoint_auth_mode="AMLToken")
    deployer = AzureDeployer(ml, contents, config, retry=no_sleep_retry())
    ml.online_endpoints.get.return_value = ManagedOnlineEndpoint(name="tuneplane-endpoint")
    ml.online_endpoints.get.return_value._scoring_uri = scoring_server
    ml.online_endpoints.get_keys.return_value = EndpointAuthToken(access_token="aml-tok")
    status, _ = deployer.chat("proj-a", MODEL_A, {"messages": []})
    assert status == 200 and _Scoring.calls[-1]["headers"]["Authorization"] == "Bearer aml-tok"
    ml.online_endpoints.get_keys.assert_called_once_with("tuneplane-endpoint")


def test_a_deployment_rejected_by_azure_fails_clearly(ml, deployer):
    ml.online_deployments.begin_create_or_update.side_effect = http_error(400, "UserError: instance type not allowed")
    with pytest.raises(PermanentBackendError) as caught:
        deployer.deploy(project="proj-a", model=MODEL_A, base_model=BASE, source_uri=f"azureml://jobs/{JOB_A}/outputs/model")
    assert caught.value.code == "deployment_rejected" and "instance type not allowed" in caught.value.message
