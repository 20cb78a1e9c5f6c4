"""The FastAPI application: the same routers under /v1 (OpenAI), /openai/v1 and /openai (Azure OpenAI).

Only the /v1 copy appears in /openapi.json; the Azure paths are the same operations.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from tuneplane import __version__
from tuneplane.api.auth import AuthMiddleware, require_api_version
from tuneplane.api.chat import ChatRouting, azure_chat_router, chat_router
from tuneplane.api.deployments import deployments_router
from tuneplane.api.errors import install_error_handlers, unavailable_app
from tuneplane.api.files import files_router
from tuneplane.api.fine_tuning import jobs_router
from tuneplane.api.models import models_router
from tuneplane.api.retraining_policies import retraining_router
from tuneplane.api.schemas import Health
from tuneplane.api.webhooks import webhooks_router
from tuneplane.domain.catalog import Catalog
from tuneplane.ports import BackendError
from tuneplane.services.files import FileService
from tuneplane.services.jobs import JobService
from tuneplane.services.keys import KeyVerifier, ensure_key
from tuneplane.settings import Settings
from tuneplane.wiring import (
    Adapters,
    build_adapters,
    build_policy_store,
    build_serving,
    estimate_options,
    training_data_containers,
)

PREFIXES = (("/v1", True, False), ("/openai/v1", False, False), ("/openai", False, True))


def create_app(settings: Settings | None = None, adapters: Adapters | None = None) -> FastAPI:
    try:
        return _create_app(settings, adapters)
    except BackendError as exc:  # e.g. TUNEPLANE_BACKEND=azure with a setting missing or refused
        return unavailable_app(exc)


def _create_app(settings: Settings | None = None, adapters: Adapters | None = None) -> FastAPI:
    settings = settings or Settings()
    owns_adapters = adapters is None
    adapters = adapters or build_adapters(settings)
    serving = build_serving(settings, adapters)  # wraps adapters.jobs: before anything takes it
    if settings.api_key:
        ensure_key(adapters.keys, "default", settings.api_key, name="TUNEPLANE_API_KEY")

    catalog = Catalog(settings.catalog_names)
    files = FileService(adapters.files, adapters.contents, max_bytes=settings.max_upload_bytes)
    jobs = JobService(adapters.jobs, adapters.files, catalog, min_examples=settings.min_training_examples,
                      **estimate_options(settings))
    # Retraining: the policies API, the handler the triggers and the inbox feed call, and the
    # promotion gate for the reconciler's context (``ReconcileContext.promotion``).
    from tuneplane.inbox import blob_source, build_feed
    from tuneplane.retraining import PolicyService, PromotionGate, RetrainingHandler, webhook_notifier

    policy_store = build_policy_store(settings, adapters)
    policies = PolicyService(policy_store, jobs, catalog, containers=training_data_containers(settings))
    retraining = RetrainingHandler(policy_store, files, jobs, blob_source(settings),
                                   notify=webhook_notifier(serving.webhooks))
    feed = build_feed(settings, retraining, policy_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Everything built so far lives as long as the process: move it out of the collector's
        # sight, so that full collections (latency spikes under load) stay short.
        gc.collect()
        gc.freeze()
        await run_in_threadpool(serving.start)
        if reconciler is not None:
            reconciler.start()
        if feed is not None:
            feed.start()
        yield
        if reconciler is not None:
            await reconciler.stop()  # live trainers checkpoint and stop; the next start resumes them
        if feed is not None:
            await run_in_threadpool(feed.stop)
        await run_in_threadpool(serving.close)
        if owns_adapters:
            adapters.close()

    app = FastAPI(
        title="tuneplane",
        version=__version__,
        description="OpenAI-compatible fine-tuning API for open models.",
        lifespan=lifespan,
        # No OpenTelemetry is configured; switching it off skips a provider check on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.adapters = adapters
    app.state.files = files
    app.state.jobs = jobs
    app.state.serving = serving
    app.state.policies = policies
    app.state.retraining = retraining
    app.state.promotion = PromotionGate(policy_store, adapters.jobs)
    # The reconciler moves jobs forward in the background (tuneplane.reconcile_loop) and user actions
    # nudge it. Local backend only: in Azure a timer trigger runs the same pass (function_app.py).
    reconciler = None
    if settings.reconciler and settings.backend == "local":
        from tuneplane.reconcile_loop import ReconcileLoop, build_local_context

        context = build_local_context(settings, adapters, deployer=serving.deployer, registry=serving.registry)
        context.promotion = app.state.promotion
        reconciler = ReconcileLoop(context, settings.reconcile_interval)
        jobs.on_change = reconciler.nudge
    app.state.reconciler = reconciler
    install_error_handlers(app)

    # Jobs first: their retrieve and list are the hot paths, and routes are matched in order. Each
    # router is included straight into the app (not through a parent router): every level of nesting
    # costs a matching pass on each request.
    routing = ChatRouting(serving.deployer, catalog)
    routers = (
        jobs_router(jobs),
        files_router(files),
        models_router(catalog, jobs),
        chat_router(routing),
        deployments_router(serving.deployer, serving.registry, catalog),
        webhooks_router(serving.webhooks, serving.dispatcher),
        retraining_router(policies),
    )
    for prefix, in_schema, needs_version in PREFIXES:
        for router in routers:
            app.include_router(
                router,
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
