"""Runs ``reconcile_once`` in the local server: every ``TUNEPLANE_RECONCILE_INTERVAL`` seconds, and at
once when a user action nudges it (create, cancel, pause, resume).

Passes run one at a time on one worker thread, because a pass does blocking I/O (SQLite, files,
starting processes) that must not hold up the event loop. Stopping the server asks the live trainers
to checkpoint and stop (see LocalRunner.shutdown); the next start resumes them. In Azure a timer
trigger calls the same ``reconcile_once`` with a context built from the Azure adapters.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tuneplane.reconciler import ReconcileContext, reconcile_once

log = logging.getLogger("tuneplane.reconciler")


def build_local_context(settings: Any, adapters: Any, deployer: Any = None, registry: Any = None) -> ReconcileContext:
    """The embedded default: the subprocess runner and the directory registry under TUNEPLANE_HOME."""
    from tuneplane.backends.local_registry import LocalModelRegistry
    from tuneplane.backends.local_runner import LocalRunner

    runner = LocalRunner(
        settings.home,
        max_concurrent=settings.max_concurrent_jobs,
        grace_seconds=settings.trainer_grace_seconds,
    )
    return ReconcileContext(
        jobs=adapters.jobs,
        files=adapters.files,
        contents=adapters.contents,
        backends={"local": runner},
        registry=registry if registry is not None else LocalModelRegistry(settings.home / "registry"),
        deployer=deployer,
        checkpoint_every_n_steps=settings.checkpoint_every_n_steps,
    )


class ReconcileLoop:
    def __init__(self, context: ReconcileContext, interval: float):
        self.context = context
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconciler")

    def nudge(self) -> None:
        """Run a pass soon. Safe from any thread (sync request handlers run in a thread pool)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="reconciler")

    async def stop(self, *, stop_runs: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        if stop_runs:
            for backend in self.context.backends.values():
                shutdown = getattr(backend, "shutdown", None)
                if shutdown is not None:
                    shutdown()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                report = await loop.run_in_executor(self._executor, reconcile_once, self.context)
                for job_id, error in report.errors.items():
                    log.warning("job %s: %s", job_id, error)
            except Exception:  # the loop must outlive any one bad pass
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except asyncio.TimeoutError:
                pass
