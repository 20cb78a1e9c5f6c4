"""The FastAPI application: the same routers under /v1 (OpenAI), /openai/v1 and /openai (Azure OpenAI).

Only the /v1 copy appears in /openapi.json; the Azure paths are the same operations.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from tuneplane import __version__
from tuneplane.api.auth import AuthMiddleware, require_api_version
from tuneplane.api.chat import ChatRouting, azure_chat_router, chat_router
from tuneplane.api.deployments import deployments_router
from tuneplane.api.errors import install_error_handlers
from tuneplane.api.files import files_router
from tuneplane.api.fine_tuning import jobs_router
from tuneplane.api.models import models_router
from tuneplane.api.schemas import Health
from tuneplane.api.webhooks import webhooks_router
from tuneplane.domain.catalog import Catalog
from tuneplane.services.files import FileService
from tuneplane.services.jobs import JobService
from tuneplane.services.keys import KeyVerifier, ensure_key
from tuneplane.settings import Settings
from tuneplane.wiring import Adapters, build_adapters, build_serving

PREFIXES = (("/v1", True, False), ("/openai/v1", False, False), ("/openai", False, True))


def create_app(settings: Settings | None = None, adapters: Adapters | None = None) -> FastAPI:
    settings = settings or Settings()
    owns_adapters = adapters is None
    adapters = adapters or build_adapters(settings)
    serving = build_serving(settings, adapters)  # wraps adapters.jobs: before anything takes it
    if settings.api_key:
        ensure_key(adapters.keys, "default", settings.api_key, name="TUNEPLANE_API_KEY")

    catalog = Catalog(settings.catalog_names)
    files = FileService(adapters.files, adapters.contents, max_bytes=settings.max_upload_bytes)
    jobs = JobService(adapters.jobs, adapters.files, catalog, min_examples=settings.min_training_examples)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(serving.start)
        yield
        await run_in_threadpool(serving.close)
        if owns_adapters:
            adapters.close()

    app = FastAPI(
        title="tuneplane",
        version=__version__,
        description="OpenAI-compatible fine-tuning API for open models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.adapters = adapters
    app.state.files = files
    app.state.jobs = jobs
    app.state.serving = serving
    install_error_handlers(app)

    api = APIRouter()
    # Jobs first: their retrieve and list are the hot paths, and routes are matched in order.
    api.include_router(jobs_router(jobs))
    api.include_router(files_router(files))
    api.include_router(models_router(catalog, jobs))
    routing = ChatRouting(serving.deployer, catalog)
    api.include_router(chat_router(routing))
    api.include_router(deployments_router(serving.deployer, serving.registry, catalog))
    api.include_router(webhooks_router(serving.webhooks, serving.dispatcher))
    for prefix, in_schema, needs_version in PREFIXES:
        app.include_router(
            api,
            prefix=prefix,
            include_in_schema=in_schema,
            dependencies=[Depends(require_api_version)] if needs_version else [],
        )

    # Azure OpenAI's deployment-scoped data plane: /openai/deployments/{name}/chat/completions?api-version=
    app.include_router(azure_chat_router(routing), prefix="/openai", dependencies=[Depends(require_api_version)])

    @app.get("/health", response_model=Health, tags=["health"])
    async def health():
        return {"status": "ok", "version": __version__}

    app.openapi = lambda: _openapi(app)
    app.add_middleware(AuthMiddleware, verifier=KeyVerifier(adapters.keys, cache_seconds=settings.key_cache_seconds))
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, corrected to what the API really does: validation errors are 400s in the
    error envelope (never 422), and every route but /health needs a key."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if path != "/health":
                operation["security"] = [{"bearer": []}, {"api-key": []}]
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
    }
    app.openapi_schema = schema
    return schema
