"""The local runner's process mechanics, against a fake trainer that keeps the output contract.

What matters here is the lifecycle of processes and files: FIFO with a concurrency limit, pause
(checkpoint, exit 75) and resume from the checkpoint, cancel with SIGKILL escalation, adoption by a
new runner after the server dies, restart after the whole run was killed, and exit-code mapping.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tuneplane.backends.local_runner import LocalRunner
from tuneplane.domain.records import JobRecord
from tuneplane.ports import TrainingBackend

FAKE = [sys.executable, str(Path(__file__).with_name("fake_trainer.py"))]


def make_job(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, project="default", created_at=int(time.time()), status="queued", model="tiny-random-llama",
        training_file="file-x", seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {}}},
    )


def spec(behaviour: str) -> dict:
    return {"spec_version": 1, "base_model": f"fake:{behaviour}", "training_file": "/dev/null"}


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_TRAINER_LEDGER", str(path))
    return path


@pytest.fixture
def runner(tmp_path, ledger):
    made = []

    def build(**kwargs) -> LocalRunner:
        r = LocalRunner(tmp_path / "home", trainer_command=FAKE, grace_seconds=kwargs.pop("grace_seconds", 5.0), **kwargs)
        made.append(r)
        return r

    yield build
    # Never leave a process behind, whatever the test did.
    pids = [e["pid"] for e in read_ledger(ledger) if e["event"] == "start"]
    for r in made:
        for run in r.runs_dir.iterdir():
            if (run / "supervisor.json").exists():
                pids.append(json.loads((run / "supervisor.json").read_text())["pid"])
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for r in made:
        wait_for(lambda: r.active_count() == 0, timeout=30)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_never_overlapping(entries: list[dict]) -> None:
    alive: set[int] = set()
    for entry in sorted(entries, key=lambda e: (e["t"], e["event"] == "start")):
        if entry["event"] == "start":
            assert not alive, f"two trainers alive at once: {alive} and {entry['pid']}"
            alive.add(entry["pid"])
        else:
            alive.discard(entry["pid"])


def test_satisfies_the_port(runner):
    assert isinstance(runner(), TrainingBackend)


def test_run_to_success_with_events_checkpoints_and_progress(runner, ledger):
    r = runner()
    job = make_job("ftjob-a")
    assert r.observe(job).status == "unknown"
    assert r.submit(job, spec("steps=6,sleep=0.05,every=2")) == job.id
    state = wait_for(lambda: (s := r.observe(job)).status == "succeeded" and s)
    assert state.trained_tokens == 60
    assert state.output_uri == str(r.run_dir(job.id) / "output")
    events = r.read_events(job)
    assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2, 3, 4, 5, 6]
    assert [e.id for e in events] == sorted(e.id for e in events), "ids sort in the order events happened"
    assert [e.id for e in r.read_events(job)] == [e.id for e in events], "ids are stable across reads"
    assert [e.id for e in r.read_events(job, after=events[2].id)] == [e.id for e in events[3:]]
    checkpoints = r.read_checkpoints(job)
    assert [c.step_number for c in checkpoints] == [2, 4, 6]
    assert checkpoints[0].fine_tuned_model_checkpoint == "ft:tiny-random-llama:default::ftjob-a:ckpt-step-2"
    spec_written = json.loads((r.run_dir(job.id) / "spec.json").read_text())
    assert spec_written["resume"] == "auto" and spec_written["job_id"] == job.id
    # The reconciler takes the results file through the port, as it does from an Azure run.
    assert r.read_results(job) == (r.run_dir(job.id) / "output" / "results.csv").read_bytes()
    assert r.read_results(make_job("ftjob-never-run")) is None
    # Submitting a finished run again does nothing.
    r.submit(job, spec("steps=6"))
    assert [e["event"] for e in read_ledger(ledger)] == ["start", "end"]


def test_fifo_with_concurrency_limit(runner, ledger):
    r = runner(max_concurrent=1)
    jobs = [make_job(f"ftjob-{i}") for i in range(3)]
    finished: set[str] = set()

    def one_pass() -> bool:
        # What the reconciler does each pass: oldest first, submit whatever is not done.
        for job in jobs:
            status = r.observe(job).status
            if status in ("unknown", "queued"):
                r.submit(job, spec("steps=3,sleep=0.05,every=3"))
            elif status == "succeeded":
                finished.add(job.id)
            assert r.active_count() <= 1
        return len(finished) == 3

    wait_for(one_pass, timeout=90, interval=0.02)
    entries = read_ledger(ledger)
    assert_never_overlapping(entries)
    assert [e["job"] for e in entries if e["event"] == "start"] == [j.id for j in jobs], "FIFO order"


def test_pause_then_resume_continues_from_the_checkpoint(runner, ledger):
    r = runner()
    job = make_job("ftjob-p")
    r.submit(job, spec("steps=40,sleep=0.05,every=100"))
    wait_for(lambda: len([e for e in r.read_events(job) if e.type == "metrics"]) >= 3)
    r.pause(job)
    assert r.observe(job).status in ("running", "paused")
    state = wait_for(lambda: (s := r.observe(job)).status == "paused" and s)
    assert state.returncode == 75
    paused_at = max(c.step_number for c in r.read_checkpoints(job))
    assert 3 <= paused_at < 40
    r.submit(job, spec("steps=40,sleep=0.05,every=100"))
    wait_for(lambda: r.observe(job).status == "succeeded")
    starts = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert [s["from_step"] for s in starts] == [0, paused_at]
    assert_never_overlapping(read_ledger(ledger))


def test_cancel_escalates_to_sigkill_after_the_grace_period(runner, ledger):
    r = runner(grace_seconds=1.0)
    job = make_job("ftjob-c")
    r.submit(job, spec("steps=1000,sleep=0.05,ignore_term=1"))
    wait_for(lambda: r.read_events(job))
    r.cancel(job)
    state = wait_for(lambda: (s := r.observe(job)).status == "cancelled" and s, timeout=30)
    assert state.returncode == -signal.SIGKILL
    assert not r.alive(job.id)
    # A cancelled run is never started again.
    r.submit(job, spec("steps=1000"))
    assert r.observe(job).status == "cancelled"


def test_a_new_runner_adopts_a_live_run_and_never_starts_a_second(runner, ledger):
    first = runner()
    job = make_job("ftjob-adopt")
    first.submit(job, spec("steps=30,sleep=0.05,every=5"))
    wait_for(lambda: first.read_events(job))
    # The server dies (its runner object is gone); a restarted server builds a new runner.
    second = runner()
    assert second.observe(job).status == "running"
    for _ in range(5):
        second.submit(job, spec("steps=30,sleep=0.05,every=5"))
    wait_for(lambda: second.observe(job).status == "succeeded")
    assert [e["event"] for e in read_ledger(ledger)] == ["start", "end"]


def test_after_the_whole_run_is_killed_it_restarts_from_the_last_checkpoint(runner, ledger):
    r = runner()
    job = make_job("ftjob-crash")
    r.submit(job, spec("steps=40,sleep=0.05,every=3"))
    wait_for(lambda: any(c.step_number >= 6 for c in r.read_checkpoints(job)))
    supervisor = json.loads((r.run_dir(job.id) / "supervisor.json").read_text())["pid"]
    trainer = read_ledger(ledger)[0]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(trainer, signal.SIGKILL)  # a reboot or the OOM killer takes everything
    wait_for(lambda: not r.alive(job.id))
    assert r.observe(job).status == "queued"
    last = max(c.step_number for c in r.read_checkpoints(job))
    r.submit(job, spec("steps=40,sleep=0.05,every=3"))
    wait_for(lambda: r.observe(job).status == "succeeded")
    starts = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert [s["from_step"] for s in starts] == [0, last]
    attempts = [json.loads(line)["reason"] for line in (r.run_dir(job.id) / "attempts.jsonl").read_text().splitlines()]
    assert attempts == ["start", "crash"]


def test_trainer_dies_with_its_supervisor_after_saving_a_checkpoint(runner, ledger):
    r = runner()
    job = make_job("ftjob-orphan")
    r.submit(job, spec("steps=1000,sleep=0.05,every=1000"))
    wait_for(lambda: r.read_events(job))
    supervisor = json.loads((r.run_dir(job.id) / "supervisor.json").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    ended = wait_for(lambda: [e for e in read_ledger(ledger) if e["event"] == "end"], timeout=30)
    assert ended[0]["code"] == 75, "PR_SET_PDEATHSIG sent SIGTERM: the trainer checkpointed and stopped"
    wait_for(lambda: not r.alive(job.id))
    assert r.read_checkpoints(job), "the stop left a checkpoint to resume from"
    assert r.observe(job).status == "queued"


def test_graceful_shutdown_interrupts_and_the_next_submit_resumes(runner, ledger):
    r = runner()
    job = make_job("ftjob-shutdown")
    r.submit(job, spec("steps=30,sleep=0.05,every=100"))
    wait_for(lambda: len(r.read_events(job)) >= 3)
    r.shutdown()
    wait_for(lambda: not r.alive(job.id))
    assert r.observe(job).status == "queued"
    r.submit(job, spec("steps=30,sleep=0.05,every=100"))
    wait_for(lambda: r.observe(job).status == "succeeded")
    attempts = [json.loads(line)["reason"] for line in (r.run_dir(job.id) / "attempts.jsonl").read_text().splitlines()]
    assert attempts == ["start", "interrupted"]
    assert read_ledger(ledger)[2]["from_step"] > 0


def test_bad_input_exit_code_becomes_a_clear_error_naming_the_line(runner):
    r = runner()
    job = make_job("ftjob-bad")
    r.submit(job, spec("steps=2,sleep=0.01,exit=2"))
    state = wait_for(lambda: (s := r.observe(job)).status == "failed" and s)
    assert state.error["code"] == "invalid_training_file"
    assert state.error["param"] == "training_file"
    assert "line 3" in state.error["message"]


@pytest.mark.parametrize("code, expected", [(3, "non_finite_loss"), (4, "out_of_memory"), (1, "training_error")])
def test_exit_codes_map_to_error_codes(runner, code, expected):
    r = runner()
    job = make_job(f"ftjob-exit{code}")
    r.submit(job, spec(f"steps=1,sleep=0.01,exit={code}"))
    state = wait_for(lambda: (s := r.observe(job)).status == "failed" and s)
    assert state.error["code"] == expected


def test_repeated_crashes_fail_the_job_instead_of_looping(runner, ledger):
    r = runner(max_restarts=1)
    job = make_job("ftjob-loop")
    for attempt in (1, 2):
        r.submit(job, spec("steps=1000,sleep=0.05,every=1000"))
        starts = wait_for(lambda: [e for e in read_ledger(ledger) if e["event"] == "start"][attempt - 1:])
        supervisor = wait_for(lambda: (i := json.loads((r.run_dir(job.id) / "supervisor.json").read_text()))["attempt"] == attempt and i)
        os.kill(supervisor["pid"], signal.SIGKILL)
        os.killpg(starts[0]["pid"], signal.SIGKILL)
        wait_for(lambda: not r.alive(job.id))
    state = r.observe(job)
    assert state.status == "failed" and state.error["code"] == "trainer_crashed"


def test_a_missing_trainer_fails_the_job_with_the_reason(tmp_path):
    r = LocalRunner(tmp_path, trainer_command=[str(tmp_path / "no-such-trainer")])
    job = make_job("ftjob-missing")
    r.submit(job, spec("steps=1"))
    state = wait_for(lambda: (s := r.observe(job)).status == "failed" and s)
    assert state.error["code"] == "training_error"
    assert "cannot start the trainer" in state.error["message"] and "no-such-trainer" in state.error["message"]


def test_rejects_bad_job_ids_and_limits(tmp_path):
    with pytest.raises(ValueError, match="max_concurrent"):
        LocalRunner(tmp_path, max_concurrent=0)
    with pytest.raises(ValueError, match="job id"):
        LocalRunner(tmp_path).run_dir("../etc")
