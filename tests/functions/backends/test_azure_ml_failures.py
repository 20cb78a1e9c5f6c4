"""Failure handling of the Azure backend, with the SDK's own exception types raised by the mocked
MLClient operations: transient errors retry within a budget, quota keeps the job queued, permanent
errors carry a clear code, and misconfiguration names the setting."""

from __future__ import annotations

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions.backends.azure_ml_fakes import (
    http_error,
    job_record,
    mocked_ml_client,
    no_sleep_retry,
    not_found,
    set_runs,
    settings,
    training_spec,
)
from tuneplane.backends.azure_config import AzureSettings
from tuneplane.backends.azure_ml import AzureTrainingBackend
from tuneplane.backends.azure_ml_deploy import AzureModelRegistry
from tuneplane.ports import (
    BackendMisconfigured,
    BackendUnavailable,
    CapacityUnavailable,
    PermanentBackendError,
)
from tuneplane.stores.azure_account import StorageAccount
from tuneplane.stores.azure_blob import AzureBlobContentStore

TRAINING = "file-0005f1a2b3c4d5e6f7a8b9c1"


@pytest.fixture
def contents(azurite):  # noqa: F811
    store = AzureBlobContentStore(StorageAccount(connection_string=azurite.connection_string), azurite.unique_name("c"))
    store.put_bytes(TRAINING, b'{"messages": []}\n')
    return store


@pytest.fixture
def ml():
    client = mocked_ml_client()
    client.jobs.get.side_effect = not_found()
    return client


def make_backend(ml, contents, azurite, budget_s: float = 30.0, **extra):  # noqa: F811
    retry = no_sleep_retry(budget_s)
    config = settings(azurite.connection_string, contents._container.container_name, **extra)
    return AzureTrainingBackend(ml, contents, config, retry=retry), retry


def submit(backend, contents, **job_fields):
    job = job_record(**job_fields)
    return backend.submit(job, training_spec(job, contents.uri(TRAINING)))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_http_errors_are_retried_until_success(ml, contents, azurite, status):  # noqa: F811
    backend, retry = make_backend(ml, contents, azurite)
    ml.jobs.create_or_update.side_effect = [http_error(status, "try later"), http_error(status, "try later"), None]
    assert submit(backend, contents) == "ftjob-0005f1a2b3c4d5e6f7a8b9c0"
    assert ml.jobs.create_or_update.call_count == 3 and retry.attempts == 3 and retry.slept[0] > 0


def test_timeouts_are_retried(ml, contents, azurite):  # noqa: F811
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    backend, retry = make_backend(ml, contents, azurite)
    set_runs(ml, {job_record().id: "Running"})
    ml.jobs.begin_cancel.side_effect = [ServiceRequestError("connect timeout"), ServiceResponseError("read timeout"), None]
    backend.cancel(job_record())
    assert ml.jobs.begin_cancel.call_count == 3


def test_the_retry_budget_is_bounded(ml, contents, azurite):  # noqa: F811
    backend, retry = make_backend(ml, contents, azurite, budget_s=5.0)
    ml.jobs.create_or_update.side_effect = http_error(503, "Service Unavailable")
    with pytest.raises(BackendUnavailable) as caught:
        submit(backend, contents)
    assert caught.value.code == "azure_unavailable"
    assert retry.slept[0] <= 5.0 and 2 <= ml.jobs.create_or_update.call_count < 40


@pytest.mark.parametrize("message", [
    "QuotaExceeded: Not enough quota available for Standard_NC24ads_A100_v4 in SubscriptionId",
    "UserError: The serverless compute request failed: insufficient capacity for the requested VM size",
])
def test_quota_and_capacity_refusals_keep_the_job_queued_with_an_event(ml, contents, azurite, message):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite)
    job = job_record()
    ml.jobs.create_or_update.side_effect = http_error(400, message)
    assert submit(backend, contents) == job.id
    assert ml.jobs.create_or_update.call_count == 1  # not retried within the pass
    state = backend.observe(job)
    assert state.status == "queued" and state.error is None
    events = backend.read_events(job)
    assert len(events) == 1 and events[0].level == "warn" and message.splitlines()[0] in events[0].message
    submit(backend, contents)  # the next pass tries again; the same refusal is the same event
    assert [e.id for e in backend.read_events(job)] == [events[0].id]
    # Capacity comes back: the run is created, and the earlier event stays in the history.
    ml.jobs.create_or_update.side_effect = None
    assert submit(backend, contents) == job.id
    set_runs(ml, {job.id: "Running"})
    assert backend.observe(job).status == "running"
    assert [e.id for e in backend.read_events(job)] == [events[0].id]


def _refused(backend, job):
    state = backend.observe(job)
    assert state.status == "failed"
    return state.error


def test_an_unknown_compute_fails_the_job(ml, contents, azurite):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite)
    ml.compute.get.side_effect = not_found("Compute gpu-zzz not found")
    submit(backend, contents, compute="gpu-zzz")
    error = _refused(backend, job_record(compute="gpu-zzz"))
    assert error["code"] == "compute_not_found" and "gpu-zzz" in error["message"]
    ml.jobs.create_or_update.assert_not_called()


def test_a_missing_environment_fails_the_job(ml, contents, azurite):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite, environment="azureml:tuneplane-training:9")
    ml.environments.get.side_effect = not_found()
    submit(backend, contents)
    error = _refused(backend, job_record())
    assert error["code"] == "environment_not_found" and "tuneplane-training:9" in error["message"]
    ml.environments.get.assert_called_once_with("tuneplane-training", version="9")
    ml.jobs.create_or_update.assert_not_called()


def test_a_rejected_job_fails_with_the_services_message(ml, contents, azurite):  # noqa: F811
    from azure.ai.ml.exceptions import ValidationException

    backend, _ = make_backend(ml, contents, azurite)
    ml.jobs.create_or_update.side_effect = ValidationException(
        message="Environment image build failed: pip could not resolve torch==2.13.0", no_personal_data_message="x")
    submit(backend, contents)
    error = _refused(backend, job_record())
    assert error["code"] == "job_rejected" and "image build failed" in error["message"]


def test_an_unregistrable_model_fails_with_a_clear_code(ml, azurite):  # noqa: F811
    registry = AzureModelRegistry(ml, settings(azurite.connection_string, "unused"), retry=no_sleep_retry())
    ml.models.get.side_effect = not_found()
    ml.models.create_or_update.side_effect = http_error(400, "UserError: the path azureml://jobs/x/outputs/model is empty")
    with pytest.raises(PermanentBackendError) as caught:
        registry.register(project="p", name="ft:m:p::ftjob-1", source_uri="azureml://jobs/x/outputs/model",
                          base_model="m", tags={})
    assert caught.value.code == "model_registration_failed" and "is empty" in caught.value.message


def test_a_refused_credential_names_the_setting(ml, contents, azurite):  # noqa: F811
    from azure.core.exceptions import ClientAuthenticationError

    backend, _ = make_backend(ml, contents, azurite)
    ml.jobs.get.side_effect = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    with pytest.raises(BackendMisconfigured) as caught:
        submit(backend, contents)
    assert caught.value.setting == "TUNEPLANE_AZURE_CLIENT_ID" and "credential" in caught.value.message


def test_a_missing_workspace_names_the_setting(ml, contents, azurite):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite)
    ml.jobs.get.side_effect = not_found("Workspace ws-tuneplane could not be found in resource group rg-tuneplane")
    with pytest.raises(BackendMisconfigured) as caught:
        submit(backend, contents)
    assert caught.value.setting == "TUNEPLANE_AZURE_WORKSPACE"


@pytest.mark.parametrize("missing", ["subscription_id", "resource_group", "workspace"])
def test_missing_settings_are_named(missing, monkeypatch):
    for name in ("SUBSCRIPTION_ID", "RESOURCE_GROUP", "WORKSPACE"):
        monkeypatch.setenv(f"TUNEPLANE_AZURE_{name}", "x")
    monkeypatch.delenv(f"TUNEPLANE_AZURE_{missing.upper()}")
    with pytest.raises(BackendMisconfigured) as caught:
        AzureSettings().ml_client()
    assert caught.value.setting == f"TUNEPLANE_AZURE_{missing.upper()}"


def test_a_bad_price_table_names_the_setting():
    with pytest.raises(BackendMisconfigured) as caught:
        AzureSettings(price_table='{"Standard_X": {"gpus": "eight"}}').instance_types()
    assert caught.value.setting == "TUNEPLANE_AZURE_PRICE_TABLE" and "Standard_X.gpus" in caught.value.message


def test_nothing_is_lost_while_azure_is_unreachable(ml, contents, azurite):  # noqa: F811
    """Every pass while Azure is down raises BackendUnavailable (the job stays as it was); the first
    pass after it comes back submits the same run, exactly once."""
    backend, _ = make_backend(ml, contents, azurite, budget_s=1.0)
    ml.jobs.get.side_effect = http_error(503, "down")
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            submit(backend, contents)
    ml.jobs.create_or_update.assert_not_called()
    ml.jobs.get.side_effect = not_found()
    assert submit(backend, contents) == "ftjob-0005f1a2b3c4d5e6f7a8b9c0"
    ml.jobs.create_or_update.assert_called_once()


def test_a_wrong_training_dir_names_the_setting(ml, contents, azurite, tmp_path):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite, training_dir=str(tmp_path))
    with pytest.raises(BackendMisconfigured) as caught:
        submit(backend, contents)
    assert caught.value.setting == "TUNEPLANE_AZURE_TRAINING_DIR"


def test_a_registered_code_asset_needs_a_registered_environment(ml, contents, azurite):  # noqa: F811
    backend, _ = make_backend(ml, contents, azurite, training_dir="azureml:tuneplane-training-code:4")
    with pytest.raises(BackendMisconfigured) as caught:
        submit(backend, contents)
    assert caught.value.setting == "TUNEPLANE_AZURE_ENVIRONMENT"
    backend, _ = make_backend(ml, contents, azurite, training_dir="azureml:tuneplane-training-code:4",
                              environment="azureml:tuneplane-training:9")
    submit(backend, contents)
    entity = ml.jobs.create_or_update.call_args.args[0]
    assert entity.code == "azureml:tuneplane-training-code:4" and entity.environment == "azureml:tuneplane-training:9"
    entity._to_dict()
