"""ModelRegistry and Deployer on Azure ML.

Registry: each fine-tuned model is one Azure ML model (version 1), registered from the job's output
``azureml://jobs/{name}/outputs/model``, tagged with its lineage (project, job, base model, source).

Deployer: one ``ManagedOnlineDeployment`` per base model on the endpoint Pulumi owns, running the
scoring module from ``training/`` (``tuneplane_training/serving/score.py``) and serving every
adapter deployed on that base. The deployment's model is a bundle folder on the datastore:

    tuneplane-deployments/{deployment}/{revision}/            the first adapter (by name)
    tuneplane-deployments/{deployment}/{revision}/adapters/N/ every other adapter

with ``TUNEPLANE_ADAPTERS`` telling the scoring module which name lives where. The deployment is
self-describing: ``TUNEPLANE_ADAPTER_SOURCES`` (ignored by the scoring module) records each
adapter's source, so the next deploy or undeploy needs no other state.

Traffic: Pulumi owns the endpoint but ignores its traffic maps (infra/tuneplane_infra/endpoint.py),
and the control plane owns those. Every call names its deployment with the
``azureml-model-deployment`` header, which Azure ML routes whatever the split says, so the split
only matters for calls without it. The deployer changes nothing but ``traffic`` on the endpoint it
read (every property Pulumi set goes back as it was): a ready deployment gets 100% while nothing
else has any, and a deployment leaves the split before it is deleted (Azure ML refuses to delete one
that still has traffic).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from tuneplane.backends import azure_ml_jobs as jobs_
from tuneplane.backends.azure_config import AzureSettings
from tuneplane.backends.azure_ml_errors import Retry
from tuneplane.domain.ids import parse_fine_tuned_model
from tuneplane.ports import NotFound, PermanentBackendError

SCORING_SCRIPT = "tuneplane_training/serving/score.py"
_SKIP_IN_BUNDLE = re.compile(r"^(checkpoints/|events\.jsonl$|results\.csv$|manifest\.json$|\.)")


def _slug(value: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:limit].strip("-")


def _digest(value: str, n: int = 8) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:n]


def model_asset_name(model: str) -> str:
    """Azure ML model names allow letters, digits, '-', '_', '.'; ours have ':'."""
    return f"{_slug(model, 200) or 'model'}-{_digest(model)}"


def deployment_name(base_model: str) -> str:
    """3-32 characters, a letter first: ``tp-{slug}-{digest}``, unique per base model."""
    return f"tp-{_slug(base_model, 20) or 'base'}-{_digest(base_model, 6)}"


def source_prefix(source_uri: str) -> str:
    """The datastore folder behind ``azureml://jobs/{name}/outputs/model`` (see azure_ml_jobs)."""
    match = re.fullmatch(r"azureml://jobs/([A-Za-z0-9_-]+)/outputs/model/?", source_uri)
    if match is None:
        raise PermanentBackendError("invalid_model_source", f"source: {source_uri} is not an Azure ML job output")
    return jobs_.run_folder(jobs_.job_id_of(match.group(1))) + "/model/"


class AzureModelRegistry:
    def __init__(self, ml_client: Any, settings: AzureSettings, *, retry: Retry | None = None) -> None:
        self.ml = ml_client
        self.settings = settings
        self.retry = retry or Retry(settings.retry_budget_s)

    @staticmethod
    def _entry(model: Any) -> dict[str, Any]:
        tags = dict(getattr(model, "tags", None) or {})
        return {
            "id": tags.get("tuneplane.model"),
            "project": tags.get("tuneplane.project"),
            "base_model": tags.get("tuneplane.base_model"),
            "source_uri": tags.get("tuneplane.source"),
            "asset": f"azureml:{model.name}:{model.version}",
            "tags": tags,
        }

    def _get_asset(self, asset: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.retry.call(f"read model {asset}", self.ml.models.get, asset, version="1")
        except PermanentBackendError as error:
            if isinstance(error.__cause__, ResourceNotFoundError):
                return None
            raise

    def register(self, *, project: str, name: str, source_uri: str, base_model: str, tags: dict[str, str]) -> dict[str, Any]:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        asset = model_asset_name(name)
        existing = self._get_asset(asset)
        if existing is not None:
            if (existing.tags or {}).get("tuneplane.project") != project:
                raise PermanentBackendError("model_registration_failed", f"model {name} is registered by another project")
            return self._entry(existing)
        lineage = {
            **{str(k): str(v) for k, v in tags.items()},
            "tuneplane.project": project,
            "tuneplane.model": name,
            "tuneplane.base_model": base_model,
            "tuneplane.source": source_uri,
        }
        model = Model(name=asset, version="1", path=source_uri, type=AssetTypes.CUSTOM_MODEL,
                      description=f"{name}: fine-tuned from {base_model}", tags=lineage)
        created = self.retry.call(f"register model {name}", self.ml.models.create_or_update, model,
                                  permanent_code="model_registration_failed")
        return self._entry(created if getattr(created, "tags", None) else model)

    def get(self, project: str, name: str) -> dict[str, Any] | None:
        model = self._get_asset(model_asset_name(name))
        if model is None or (model.tags or {}).get("tuneplane.project") != project:
            return None
        return self._entry(model)

    def list(self, project: str) -> list[dict[str, Any]]:
        entries = []
        for container in self.retry.call("list models", lambda: list(self.ml.models.list())):
            if not str(container.name).startswith("ft-"):
                continue
            model = self._get_asset(container.name)
            if model is not None and (model.tags or {}).get("tuneplane.project") == project:
                entries.append(self._entry(model))
        return sorted(entries, key=lambda e: e["id"] or "")


class AzureDeployer:
    # The endpoint serves fine-tuned adapters only (each deployment is built from job outputs).
    serves_base_models = False

    def __init__(self, ml_client: Any, contents: Any, settings: AzureSettings, *, retry: Retry | None = None,
                 token_provider: Any = None) -> None:
        self.ml = ml_client
        self.contents = contents
        self.settings = settings
        self.retry = retry or Retry(settings.retry_budget_s)
        self.training_dir = settings.training_dir  # resolved by azure_ml_jobs.code_of (None: the default)
        self._token_provider = token_provider  # () -> bearer token; default DefaultAzureCredential

    @property
    def endpoint(self) -> str:
        self.settings.require("endpoint")
        return str(self.settings.endpoint)

    def _deployment(self, name: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.retry.call(f"read deployment {name}", self.ml.online_deployments.get,
                                   name=name, endpoint_name=self.endpoint)
        except PermanentBackendError as error:
            if isinstance(error.__cause__, ResourceNotFoundError):
                return None
            raise

    @staticmethod
    def _sources(deployment: Any | None) -> dict[str, str]:
        if deployment is None:
            return {}
        raw = (deployment.environment_variables or {}).get("TUNEPLANE_ADAPTER_SOURCES") or "{}"
        return dict(json.loads(raw))

    def _stage_bundle(self, name: str, sources: dict[str, str]) -> tuple[str, str, dict[str, str]]:
        """Copy the adapters into one folder; returns (folder key, revision, {model: subfolder})."""
        revision = _digest(json.dumps(sources, sort_keys=True), 12)
        folder = f"tuneplane-deployments/{name}/{revision}/"
        models = sorted(sources)
        places = {model: "" if i == 0 else f"adapters/{i}/" for i, model in enumerate(models)}
        if self.contents.exists(folder + "bundle.json"):
            return folder, revision, places  # staged by an earlier pass
        for model in models:
            prefix = source_prefix(sources[model])
            keys = [k for k in self.contents.list_keys(prefix) if not _SKIP_IN_BUNDLE.match(k[len(prefix):])]
            if not any(k.endswith("/adapter_config.json") or k == prefix + "adapter_config.json" for k in keys):
                raise PermanentBackendError("not_an_adapter", f"{model}: {sources[model]} holds no LoRA adapter to serve")
            for key in keys:
                self.contents.copy(key, folder + places[model] + key[len(prefix):])
        # Written last: its presence means the whole bundle is there.
        self.contents.put_bytes(folder + "bundle.json", json.dumps({"adapters": places, "sources": sources}).encode())
        return folder, revision, places

    def build_deployment(self, name: str, base_model: str, folder: str, revision: str,
                         places: dict[str, str], sources: dict[str, str], number: int) -> Any:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, Model, OnlineRequestSettings

        primary = next(m for m, p in places.items() if p == "")
        return ManagedOnlineDeployment(
            name=name,
            endpoint_name=self.endpoint,
            description=f"tuneplane adapters on {base_model}",
            tags={"tuneplane.base_model": base_model, "tuneplane.revision": revision,
                  "tuneplane.revision_number": str(number)},
            # A named version: Azure ML registers it with the deployment (lineage for each bundle).
            model=Model(name=f"{name}-adapters", version=str(number), type=AssetTypes.CUSTOM_MODEL,
                        path=jobs_.datastore_uri(self.settings.datastore, folder),
                        tags={"tuneplane.base_model": base_model, "tuneplane.revision": revision}),
            code_configuration=CodeConfiguration(code=jobs_.code_of(self.training_dir), scoring_script=SCORING_SCRIPT),
            environment=jobs_.environment_of(self.settings.environment, self.training_dir),
            instance_type=self.settings.deployment_instance_type,
            instance_count=self.settings.deployment_instance_count,
            environment_variables={
                "TUNEPLANE_MODEL_NAME": primary,
                "TUNEPLANE_BASE_MODEL": base_model,
                "TUNEPLANE_ADAPTERS": json.dumps({m: p.rstrip("/") for m, p in places.items() if p}, sort_keys=True),
                "TUNEPLANE_ADAPTER_SOURCES": json.dumps(sources, sort_keys=True),
            },
            # Generation is slow next to a typical scoring call; Azure ML's default is 5 s.
            request_settings=OnlineRequestSettings(request_timeout_ms=90_000, max_concurrent_requests_per_instance=4),
        )

    def _apply(self, name: str, base_model: str, sources: dict[str, str], current: Any | None) -> None:
        folder, revision, places = self._stage_bundle(name, sources)
        # The bundle's model version counts up from the deployment's; a pass repeated after a crash
        # computes the same number and the same folder, so re-registering it is a no-op.
        number = int(((getattr(current, "tags", None) or {}).get("tuneplane.revision_number")) or 0) + 1
        entity = self.build_deployment(name, base_model, folder, revision, places, sources, number)
        # Not waited on: provisioning takes minutes; the reconciler polls status().
        self.retry.call(f"deploy {name}", self.ml.online_deployments.begin_create_or_update, entity,
                        permanent_code="deployment_rejected")

    def deploy(self, *, project: str, model: str, base_model: str, source_uri: str) -> dict[str, Any]:
        name = deployment_name(base_model)
        current = self._deployment(name)
        sources = self._sources(current)
        if sources.get(model) != source_uri:
            sources[model] = source_uri
            self._apply(name, base_model, sources, current)
            current = None
        return self._describe(model, name, current)

    # -- traffic (owned by the control plane; see the module docstring) --------------------------
    def _write_traffic(self, endpoint: Any, traffic: dict[str, int], *, wait: bool) -> None:
        endpoint.traffic = traffic  # the only property changed; the rest is what was read
        poller = self.retry.call(f"update traffic of {self.endpoint}", self.ml.online_endpoints.begin_create_or_update,
                                 endpoint, permanent_code="traffic_rejected")
        if wait:
            poller.result(timeout=600)

    def _route_default_traffic(self, name: str) -> None:
        endpoint = self.retry.call("read endpoint", self.ml.online_endpoints.get, self.endpoint)
        traffic = {k: int(v) for k, v in (endpoint.traffic or {}).items()}
        if sum(traffic.values()) == 0:
            self._write_traffic(endpoint, {**traffic, name: 100}, wait=False)

    def _leave_traffic(self, name: str) -> None:
        endpoint = self.retry.call("read endpoint", self.ml.online_endpoints.get, self.endpoint)
        traffic = {k: int(v) for k, v in (endpoint.traffic or {}).items()}
        if traffic.get(name, 0) > 0:
            del traffic[name]
            self._write_traffic(endpoint, traffic, wait=True)

    def _describe(self, model: str, name: str, deployment: Any | None) -> dict[str, Any]:
        state = str(getattr(deployment, "provisioning_state", None) or "Creating")
        if state == "Succeeded":
            self._route_default_traffic(name)
        status = {"Succeeded": "ready", "Failed": "failed", "Canceled": "failed", "Deleting": "deleting"}.get(state, "deploying")
        return {"object": "deployment", "model": model, "status": status, "endpoint": self.endpoint,
                "deployment": name, "azure_state": state}

    def _base_of(self, project: str, model: str) -> str | None:
        parts = parse_fine_tuned_model(model)
        if parts is None or parts["project"] != project:
            return None
        return parts["base"]

    def status(self, project: str, model: str) -> dict[str, Any] | None:
        base = self._base_of(project, model)
        if base is None:
            return None
        name = deployment_name(base)
        deployment = self._deployment(name)
        if model not in self._sources(deployment):
            return None
        return self._describe(model, name, deployment)

    def list(self, project: str) -> list[dict[str, Any]]:
        """This project's deployed models: every adapter of every tuneplane deployment on the endpoint."""
        deployments = self.retry.call("list deployments", lambda: list(self.ml.online_deployments.list(self.endpoint)))
        found = []
        for deployment in deployments:
            if not str(deployment.name).startswith("tp-"):
                continue  # not one of ours (someone else's deployment on the endpoint)
            for model in sorted(self._sources(deployment)):
                if (parse_fine_tuned_model(model) or {}).get("project") == project:
                    found.append(self._describe(model, deployment.name, deployment))
        return found

    def undeploy(self, project: str, model: str) -> bool:
        base = self._base_of(project, model)
        if base is None:
            return False
        name = deployment_name(base)
        current = self._deployment(name)
        sources = self._sources(current)
        if model not in sources:
            return False
        del sources[model]
        if sources:
            self._apply(name, base, sources, current)
        else:
            self._leave_traffic(name)
            self.retry.call(f"delete deployment {name}", self.ml.online_deployments.begin_delete,
                            name=name, endpoint_name=self.endpoint)
        return True

    # -- invoke -------------------------------------------------------------------------------
    def _authorization(self) -> str:
        if self.settings.endpoint_auth_mode == "key":
            key = self.settings.endpoint_key or self.retry.call(
                "read endpoint keys", self.ml.online_endpoints.get_keys, self.endpoint).primary_key
            return f"Bearer {key}"
        if self.settings.endpoint_auth_mode == "aml_token":
            # An AMLToken endpoint hands out short-lived tokens through the same keys call.
            return "Bearer " + self.retry.call("read endpoint token", self.ml.online_endpoints.get_keys,
                                               self.endpoint).access_token
        if self._token_provider is not None:
            return f"Bearer {self._token_provider()}"
        token = self.settings.credential().get_token("https://ml.azure.com/.default")
        return f"Bearer {token.token}"

    def scoring_uri(self) -> str:
        return str(self.retry.call("read endpoint", self.ml.online_endpoints.get, self.endpoint).scoring_uri)

    def chat(self, project: str, model: str, body: dict[str, Any], *, timeout_s: float = 120.0) -> tuple[int, dict[str, Any]]:
        """Send a chat completion to the model's deployment; returns (HTTP status, JSON body)."""
        import httpx

        base = self._base_of(project, model)
        if base is None:
            raise NotFound(f"model {model} not found")
        headers = {"Authorization": self._authorization(), "azureml-model-deployment": deployment_name(base)}

        def post() -> httpx.Response:
            response = httpx.post(self.scoring_uri(), json={**body, "model": model}, headers=headers, timeout=timeout_s)
            if response.status_code in (429, 502, 503, 504):
                response.raise_for_status()  # retried below as a transient failure
            return response

        response = self.retry.call(f"call the deployment of {model}", post)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:500], "type": "server_error", "param": None, "code": None}}
        return response.status_code, payload
