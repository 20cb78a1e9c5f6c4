"""Routes: /deployments, to deploy and undeploy a model by hand (the reconciler deploys finished
jobs itself when ``deploy`` is true).

``POST /deployments {"model": NAME}`` serves a catalog base model, or one of this project's
registered ``ft:`` models or ``ft:…:ckpt-step-N`` checkpoints; it answers when the model answers.
``DELETE /deployments/{model}`` stops serving it. Everything is project-scoped.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tuneplane.api.auth import Project
from tuneplane.api.errors import ApiError
from tuneplane.api.responses import json_response
from tuneplane.api.schemas import ErrorResponse
from tuneplane.backends.local_deployer import LocalDeployer
from tuneplane.domain.catalog import Catalog
from tuneplane.ports import BackendError, ModelRegistry

# 503: the serving backend is unreachable or misconfigured (on Azure, error.param names the setting).
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          503: {"model": ErrorResponse}}
ModelName = Annotated[str, Path(min_length=1, max_length=256)]


class CreateDeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="A catalog model or one of the project's ft: models.")


def deployments_router(deployer: LocalDeployer, registry: ModelRegistry, catalog: Catalog) -> APIRouter:
    router = APIRouter(prefix="/deployments", tags=["deployments"], responses=ERRORS)

    @router.post("", summary="Deploy a model")
    async def create_deployment(body: CreateDeploymentRequest, project: Project):
        model = body.model
        if model in catalog:
            if not getattr(deployer, "serves_base_models", True):
                raise ApiError(400, f"'{model}' is a base model: on this backend only fine-tuned (ft:) models are "
                               "deployed.", param="model", code="invalid_value")
            base, source = model, ""
        else:
            entry = await run_in_threadpool(registry.get, project, model)  # a BackendError is a 503 (api.errors)
            if entry is None:
                raise _missing(model)
            # The local registry names the adapter folder ``path``; Azure ML's its job output ``source_uri``.
            base, source = entry["base_model"], entry.get("path") or entry["source_uri"]
        try:
            deployment = await run_in_threadpool(
                lambda: deployer.deploy(project=project, model=model, base_model=base, source_uri=source)
            )
        except BackendError as exc:
            raise ApiError(503, f"Deploying '{model}' failed: {exc.message}", type="server_error", code=exc.code,
                           param="model") from exc
        return json_response(deployment)

    @router.get("", summary="List deployments")
    async def list_deployments(project: Project):
        data = await run_in_threadpool(deployer.list, project)
        return json_response({"object": "list", "data": data, "has_more": False})

    @router.get("/{model}", summary="Retrieve a deployment")
    async def retrieve_deployment(model: ModelName, project: Project):
        deployment = await run_in_threadpool(deployer.status, project, model)
        if deployment is None:
            raise _missing(model, what="deployment")
        return json_response(deployment)

    @router.delete("/{model}", summary="Undeploy a model")
    async def delete_deployment(model: ModelName, project: Project):
        if not await run_in_threadpool(deployer.undeploy, project, model):
            raise _missing(model, what="deployment")
        return json_response({"id": model, "object": "deployment.deleted", "deleted": True})

    return router


def _missing(model: str, *, what: str = "model") -> ApiError:
    code = "model_not_found" if what == "model" else "deployment_not_found"
    return ApiError(404, f"No {what} found with name '{model}'.", param="model", code=code)
