"""The cloud boundary for the Azure ML tests: a real ``MLClient`` whose operations are autospec'd
mocks (their signatures are the SDK's own, so a wrong call fails), plus the SDK's own exceptions.

Only the Azure ML service is faked. Storage (staged inputs, trainer outputs, bundles) is a real
Azurite container.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any
from unittest import mock

from tuneplane.backends.azure_config import AzureSettings
from tuneplane.backends.azure_ml_errors import Retry
from tuneplane.domain.records import JobRecord

ROOT = Path(__file__).resolve().parents[3]


class NoNetworkCredential:
    """Any token request would mean a real call to Azure: fail loudly instead."""

    def get_token(self, *scopes: str, **kwargs: Any):
        raise AssertionError(f"the test tried to get a real token for {scopes}")


def mocked_ml_client() -> Any:
    from azure.ai.ml import MLClient
    from azure.ai.ml.operations import (
        ComputeOperations,
        EnvironmentOperations,
        JobOperations,
        ModelOperations,
        OnlineDeploymentOperations,
        OnlineEndpointOperations,
    )

    client = MLClient(
        credential=NoNetworkCredential(),
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group_name="rg-tuneplane",
        workspace_name="ws-tuneplane",
    )
    client._jobs = mock.create_autospec(JobOperations, instance=True)
    client._compute = mock.create_autospec(ComputeOperations, instance=True)
    client._environments = mock.create_autospec(EnvironmentOperations, instance=True)
    client._models = mock.create_autospec(ModelOperations, instance=True)
    client._online_deployments = mock.create_autospec(OnlineDeploymentOperations, instance=True)
    client._online_endpoints = mock.create_autospec(OnlineEndpointOperations, instance=True)
    return client


def http_error(status: int, message: str, cls: type | None = None) -> Exception:
    """The SDK's exception for an HTTP failure with this status (what azure-core raises)."""
    from azure.core.exceptions import HttpResponseError

    error = (cls or HttpResponseError)(message=message)
    error.status_code = status
    return error


def not_found(message: str = "The specified resource was not found.") -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return http_error(404, message, ResourceNotFoundError)


def settings(connection_string: str, container: str, **extra: Any) -> AzureSettings:
    fields: dict[str, Any] = dict(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg-tuneplane",
        workspace="ws-tuneplane",
        storage_connection_string=connection_string,
        files_container=container,
        datastore="tuneplanefiles",
        endpoint="tuneplane-endpoint",
        training_dir=str(ROOT / "training"),
    )
    return AzureSettings(**{**fields, **extra})


def no_sleep_retry(budget_s: float = 30.0) -> Retry:
    """A Retry on a virtual clock: backoff is exercised, the test does not wait."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    retry = Retry(budget_s, sleep=sleep, clock=lambda: now[0], rng=random.Random(7))
    retry.slept = now  # type: ignore[attr-defined]
    return retry


def job_record(**extra: Any) -> JobRecord:
    fields: dict[str, Any] = dict(
        id="ftjob-0005f1a2b3c4d5e6f7a8b9c0", project="proj-a", created_at=1_760_000_000, status="queued",
        model="SmolLM2-135M-Instruct", training_file="file-0005f1a2b3c4d5e6f7a8b9c1", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                                         "learning_rate_multiplier": 1.0}}},
        peft={"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        compute="serverless",
    )
    fields.update(extra)
    return JobRecord(**fields)


def training_spec(job: JobRecord, training_uri: str, validation_uri: str | None = None) -> dict[str, Any]:
    """The spec the reconciler hands to ``submit`` (training/SPEC.md), data as ContentStore URIs."""
    return {
        "spec_version": 1, "job_id": job.id, "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "training_file": training_uri, "validation_file": validation_uri,
        "method": {"type": "supervised"}, "peft": dict(job.peft),
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 2e-4}, "seed": job.seed,
    }


def set_runs(ml: Any, statuses: dict[str, str]) -> None:
    """``jobs.get`` answers these Azure ML jobs (name → status) and 404 for any other name."""
    from azure.ai.ml.entities import CommandJob

    def get(name: str) -> Any:
        if name in statuses:
            return CommandJob(name=name, command="x", environment="azureml:e:1", status=statuses[name])
        raise not_found(f"Job {name} not found")

    ml.jobs.get.side_effect = get
