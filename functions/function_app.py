"""The Azure Functions entry point (Python v2 programming model): tuneplane's control plane.

One app object carries:
* ``http_app_func``: the same FastAPI app as ``tuneplane serve``, wrapped by ``func.AsgiFunctionApp``.
  host.json sets ``routePrefix`` to "", so the paths are the same as locally (/v1/…, /openai/…).
  The HTTP auth level is ANONYMOUS on purpose: the API authenticates every request itself
  (``Authorization: Bearer`` or ``api-key``, per project, as OpenAI clients send them); a function
  key would be a second secret that the openai client has no way to send.
* ``reconcile``: a timer trigger running one reconciler pass every minute (the reconciler is
  level-triggered and idempotent, so a late, missed or doubled tick does no harm).
* ``training_blob_created``: Event Grid ``Microsoft.Storage.BlobCreated`` on the training-data
  container (infra's subscription targets this name) -> ``RetrainingHandler.blob_created``.
* ``azureml_run_completed``: Event Grid from the Azure ML workspace; a finished run nudges the
  reconciler instead of waiting for the next tick.

Importing this module must stay cheap, because the host imports it to index the functions before
anything can run: it loads azure.functions and nothing of tuneplane's weight. The FastAPI app (its
stores, routers and models) is built on the first invocation that needs it, by whichever trigger
comes first, and the reconciler's backends on the first tick. It never loads torch, transformers,
peft or azure.ai.ml (see benchmarks/function_cold_start.py for both costs).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import azure.functions as func

log = logging.getLogger("tuneplane.functions")

RECONCILE_SCHEDULE = "0 */1 * * * *"  # NCRONTAB with seconds: at second 0 of every minute
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"


class ControlPlane:
    """The FastAPI app and the reconciler's context, each built once per worker process, on demand.

    It is also the ASGI app that ``AsgiFunctionApp`` wraps: calls (the lifespan's included) go to
    the FastAPI app, built on the first one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: Any = None
        self._context: Any = None

    @property
    def api(self) -> Any:
        with self._lock:
            if self._api is None:
                from tuneplane.app import create_app
                from tuneplane.settings import Settings

                self._api = create_app(Settings())
            return self._api

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.api(scope, receive, send)

    def startup_failure(self) -> Any:
        """The BackendError that kept the control plane from starting (a setting missing or
        refused; the API answers every request with a 503 naming it), or None."""
        return getattr(self.api.state, "unavailable", None)

    def reconcile_context(self) -> Any:
        """The reconciler's context for this backend, with the retraining promotion gate."""
        api = self.api
        with self._lock:
            if self._context is None:
                settings, adapters = api.state.settings, api.state.adapters
                loop = getattr(api.state, "reconciler", None)
                if loop is not None:  # the app's own background loop (local backend): share its runner
                    context = loop.context
                elif settings.backend == "azure":
                    from tuneplane.stores.azure import build_azure_context

                    context = build_azure_context(settings, adapters)
                else:
                    from tuneplane.reconcile_loop import build_local_context

                    context = build_local_context(settings, adapters, deployer=api.state.serving.deployer,
                                                  registry=api.state.serving.registry)
                context.promotion = api.state.promotion
                self._context = context
            return self._context


control_plane = ControlPlane()
app = func.AsgiFunctionApp(app=control_plane, http_auth_level=func.AuthLevel.ANONYMOUS)


def _misconfigured(trigger: str, error: Any) -> None:
    setting = getattr(error, "setting", None) or "a TUNEPLANE_* setting"
    log.error("%s: the control plane cannot start because of %s: %s", trigger, setting, getattr(error, "message", error))


def reconcile_pass() -> Any:
    """One reconciler pass; None (after logging the setting) while the control plane is misconfigured:
    the next tick tries again, and the settings are fixed by restarting the app."""
    from tuneplane.ports import BackendError
    from tuneplane.reconciler import reconcile_once

    failure = control_plane.startup_failure()
    if failure is not None:
        _misconfigured("reconciler pass skipped", failure)
        return None
    try:
        context = control_plane.reconcile_context()
    except BackendError as error:  # the stores work, the Azure ML settings do not
        _misconfigured("reconciler pass skipped", error)
        return None
    report = reconcile_once(context)
    for job_id, error in report.errors.items():
        log.warning("job %s: %s", job_id, error)
    log.info("reconciled %d jobs, %d changed", report.examined, len(report.changed))
    return report


@app.timer_trigger(arg_name="timer", schedule=RECONCILE_SCHEDULE, run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("reconcile tick is past due; running it now")
    reconcile_pass()


@app.event_grid_trigger(arg_name="event")
def training_blob_created(event: func.EventGridEvent) -> None:
    """A blob landed in the training-data container. Exceptions make Event Grid retry; the handler's
    ledger makes those retries (and duplicate deliveries) start one job."""
    if event.event_type != BLOB_CREATED:
        log.info("ignoring event %s of type %s", event.id, event.event_type)
        return
    from tuneplane.retraining import parse_blob_created

    try:
        blob = parse_blob_created(event.id, event.event_type, event.subject, event.get_json() or {})
    except ValueError as err:  # a malformed event will not improve by retrying
        log.error("event %s: %s", event.id, err)
        return
    failure = control_plane.startup_failure()
    if failure is not None:
        # Raised, not swallowed: Event Grid retries the delivery (then dead-letters it), so the
        # upload still starts its retraining once the setting is fixed.
        _misconfigured(f"BlobCreated event {event.id} not handled", failure)
        raise failure
    for outcome in control_plane.api.state.retraining.blob_created(blob):
        log.info("blob %s, policy %s: %s %s", blob.blob, outcome.policy_id, outcome.outcome, outcome.job_id or "")


@app.event_grid_trigger(arg_name="event")
def azureml_run_completed(event: func.EventGridEvent) -> None:
    if event.event_type == RUN_COMPLETED:
        reconcile_pass()
