"""The server's reconcile loop: passes on an interval, a nudge starts one at once, and stopping asks
live trainers to checkpoint and stop (so the next server start resumes them)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from tuneplane.reconcile_loop import ReconcileLoop, build_local_context

sys.path.insert(0, str(Path(__file__).parent))
from test_reconciler import FAKE, World  # noqa: E402  (the same real stores and fake trainer)


def local_context(world: World, **overrides):
    settings = SimpleNamespace(home=world.home, max_concurrent_jobs=1, trainer_grace_seconds=10.0,
                               checkpoint_every_n_steps=None, **overrides)
    adapters = SimpleNamespace(jobs=world.jobs, files=world.files, contents=world.contents)
    ctx = build_local_context(settings, adapters)
    ctx.backends["local"].trainer_command = FAKE
    world.runners.append(ctx.backends["local"])
    return ctx


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_nudge_runs_a_pass_long_before_the_interval(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_LEDGER", str(tmp_path / "ledger.jsonl"))
    world = World(tmp_path / "home", tmp_path / "ledger.jsonl")
    try:
        ctx = local_context(world)

        async def scenario():
            loop = ReconcileLoop(ctx, interval=3600)  # only the first pass and nudges run
            loop.start()
            await asyncio.sleep(0.3)  # the first pass finds nothing to do
            job = world.create_job("steps=2,sleep=0.02,every=2")
            loop.nudge()
            await _until(lambda: world.get(job).status == "running" or world.get(job).status == "succeeded")
            await loop.stop(stop_runs=False)

        asyncio.run(scenario())
    finally:
        world.cleanup()


def test_stop_asks_live_trainers_to_checkpoint_and_the_next_loop_resumes_them(tmp_path, monkeypatch):
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_TRAINER_LEDGER", str(ledger))
    world = World(tmp_path / "home", ledger)
    try:
        job = world.create_job("steps=60,sleep=0.05,every=1000")

        async def serve_until(predicate):
            loop = ReconcileLoop(local_context(world), interval=0.1)
            loop.start()
            await _until(predicate)
            await loop.stop()

        asyncio.run(serve_until(lambda: (world.get(job).trained_tokens or 0) >= 50))
        runner = world.runners[-1]
        deadline = time.monotonic() + 30
        while runner.alive(job.id):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ends = [json.loads(line) for line in ledger.read_text().splitlines() if '"end"' in line]
        assert [e["code"] for e in ends] == [75], "the trainer checkpointed and stopped with the server"
        assert world.get(job).status == "running", "the job is still running as far as users can tell"
        asyncio.run(serve_until(lambda: world.get(job).status == "succeeded"))
        starts = [json.loads(line) for line in ledger.read_text().splitlines() if '"start"' in line]
        assert len(starts) == 2 and starts[1]["from_step"] > 0
        messages = [e.message for e in world.jobs.list_events("default", job.id, limit=500)]
        assert messages.count("Fine-tuning job resumed (attempt 2)") == 1
    finally:
        world.cleanup()
