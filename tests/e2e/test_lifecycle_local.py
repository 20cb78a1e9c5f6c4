"""The local fine-tuning lifecycle through the official openai client, against a real uvicorn server
running the reconciler, the subprocess runner and the real ``tuneplane-train`` on the tiny model.

Covers: create -> succeeded (events, checkpoints, results file, fine-tuned model), the concurrency
limit (two jobs, limit 1: never both running), cancel, pause and resume from the checkpoint, and a
``kill -9`` of the server mid-training followed by a restart: the job finishes exactly once, and two
trainers for one job are never alive at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "tp-lifecycle-key"
ROWS = [
    {"messages": [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"The capital of {country} is {city}."},
    ]}
    for country, city in [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"),
                          ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"),
                          ("Norway", "Oslo"), ("Greece", "Athens")]
]


# The pause and crash tests must still be mid-training when they act, however fast the machine.
PAUSE_EPOCHS = 16
CRASH_EPOCHS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One server process over one TUNEPLANE_HOME; it can be killed and started again."""

    def __init__(self, home: Path, **settings: str):
        self.home = home
        self.port = free_port()
        self.env = os.environ | {
            "TUNEPLANE_HOME": str(home), "TUNEPLANE_PORT": str(self.port), "TUNEPLANE_API_KEY": API_KEY,
            "TUNEPLANE_RECONCILE_INTERVAL": "0.5", "TUNEPLANE_TRAINER_GRACE_SECONDS": "60",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            **{f"TUNEPLANE_{k.upper()}": v for k, v in settings.items()},
        }
        self.process: subprocess.Popen | None = None

    @property
    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=API_KEY, timeout=60, max_retries=0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, cwd=ROOT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited with {self.process.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become healthy")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Graceful stop asked the trainers to checkpoint and stop; make sure none is left at all.
        deadline = time.monotonic() + 60
        while trainer_pids(self.home) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in trainer_pids(self.home):
            os.kill(pid, signal.SIGKILL)


def trainer_pids(home: Path, job_id: str = "") -> list[int]:
    """Live ``tuneplane-train`` processes working in this home (for one job, if given)."""
    needle = str(home / "runs" / job_id)
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = next((l for l in (proc / "status").read_text().splitlines() if l.startswith("State:")), "")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmdline]
        if "Z" in state.split(":", 1)[-1][:3]:
            continue  # a zombie is already dead
        # The trainer itself (its console script is argv[1] of the interpreter), not its supervisor,
        # whose command line merely mentions it.
        if any(a.endswith("tuneplane-train") for a in args[:2]) and any(needle in a for a in args):
            pids.append(int(proc.name))
    return pids


def wait_for(predicate, timeout: float = 150, interval: float = 0.2, watch=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch:
            watch()
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def upload(client) -> str:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    return client.files.create(file=("capitals.jsonl", body), purpose="fine-tune").id


def create(client, training_file: str, *, n_epochs: int, batch_size: int, suffix: str, deploy: bool = False):
    # Only the first test deploys: a deployment starts an inference process, which costs seconds.
    return client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training_file, suffix=suffix, seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs, "batch_size": batch_size}}},
        extra_body={"peft": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "deploy": deploy},
    )


def events_of(client, job_id: str) -> list:
    """Every event, oldest first (the client follows the cursor across pages)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def status(client, job_id: str) -> str:
    return client.fine_tuning.jobs.retrieve(job_id).status


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("lifecycle"), max_concurrent_jobs="1")
    svc.start()
    yield svc
    svc.stop()


def test_two_jobs_run_one_at_a_time_to_success(service):
    client = service.client
    training = upload(client)
    jobs = [create(client, training, n_epochs=2, batch_size=5, suffix=f"cap{i}", deploy=i == 0) for i in range(2)]
    assert [j.status for j in jobs] == ["queued", "queued"]
    both_running = []

    def watch():
        statuses = [status(client, j.id) for j in jobs]
        if statuses.count("running") > 1:
            both_running.append(statuses)
        assert len(trainer_pids(service.home)) <= 1, "two trainers alive with a limit of 1"

    wait_for(lambda: all(status(client, j.id) == "succeeded" for j in jobs), timeout=200, watch=watch)
    assert not both_running

    job = client.fine_tuning.jobs.retrieve(jobs[0].id)
    assert job.fine_tuned_model == f"ft:tiny-random-llama:default:cap0:{job.id}"
    assert job.finished_at and job.trained_tokens and job.trained_tokens > 0 and job.error is None
    events = events_of(client, job.id)
    messages = [e.message for e in events]
    assert messages.count("Fine-tuning job started") == 1
    assert messages.count("The job has successfully completed") == 1
    assert messages[-1] == "The job has successfully completed" or messages[-1].startswith("New fine-tuned model created")
    assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2, 3, 4]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [2, 4], "one checkpoint per epoch"
    assert {c.fine_tuned_model_checkpoint for c in checkpoints} == {
        f"{job.fine_tuned_model}:ckpt-step-2", f"{job.fine_tuned_model}:ckpt-step-4"}
    [result_id] = job.result_files
    result = client.files.retrieve(result_id)
    assert result.purpose == "fine-tune-results"
    csv_text = client.files.content(result_id).text
    assert csv_text.splitlines()[0].startswith("step,train_loss") and len(csv_text.splitlines()) == 5
    # The model is in the registry with its lineage, and so are its epoch checkpoints.
    registry = list((service.home / "registry" / "default").glob("*/v1/entry.json"))
    names = {json.loads(p.read_text())["name"] for p in registry}
    assert {job.fine_tuned_model, f"{job.fine_tuned_model}:ckpt-step-2"} <= names
    # deploy=true: the reconciler deployed it before calling the job done; deploy=false: no deployment.
    deployment = job.model_extra.get("deployment")
    assert deployment["model"] == job.fine_tuned_model and deployment["status"] == "succeeded", deployment
    assert client.fine_tuning.jobs.retrieve(jobs[1].id).model_extra.get("deployment") is None


def test_cancel_a_running_job(service):
    client = service.client
    job = create(client, upload(client), n_epochs=50, batch_size=1, suffix="cancel")
    wait_for(lambda: status(client, job.id) == "running" and trainer_pids(service.home, job.id))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("running", "cancelled")
    wait_for(lambda: status(client, job.id) == "cancelled", timeout=120)
    wait_for(lambda: not trainer_pids(service.home, job.id), timeout=30)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model is None and done.finished_at
    time.sleep(2)  # a few more reconcile passes: a cancelled job is never started again
    assert not trainer_pids(service.home, job.id) and status(client, job.id) == "cancelled"


def test_pause_then_resume_continues_from_the_checkpoint(service):
    client = service.client
    # Enough steps that the pause lands mid-run even on a fast, idle machine (10 rows, 5 steps an epoch).
    job = create(client, upload(client), n_epochs=PAUSE_EPOCHS, batch_size=2, suffix="pause")
    wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data))
    client.fine_tuning.jobs.pause(job.id)
    wait_for(lambda: status(client, job.id) == "paused", timeout=120)
    assert not trainer_pids(service.home, job.id)
    saved = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert saved, "pausing saved a checkpoint"
    paused_step = max(c.step_number for c in saved)
    client.fine_tuning.jobs.resume(job.id)
    wait_for(lambda: status(client, job.id) == "succeeded", timeout=200)
    events = events_of(client, job.id)
    messages = [e.message for e in events]
    assert "Job paused" in messages and "Fine-tuning job resumed (attempt 2)" in messages
    # The second attempt trained only the steps after the checkpoint.
    resumed_at = messages.index("Fine-tuning job resumed (attempt 2)")
    later_steps = [e.data["step"] for e in events[resumed_at:] if e.type == "metrics"]
    assert later_steps and min(later_steps) == paused_step + 1 and max(later_steps) == PAUSE_EPOCHS * 5


def test_kill_9_of_the_server_mid_training_then_restart_finishes_exactly_once(tmp_path):
    svc = Service(tmp_path / "home", max_concurrent_jobs="1")
    svc.start()
    try:
        client = svc.client
        job = create(client, upload(client), n_epochs=CRASH_EPOCHS, batch_size=2, suffix="crash")
        wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data))
        most_alive = []
        stop_watching = threading.Event()

        def watch_trainers():
            while not stop_watching.is_set():
                most_alive.append(len(trainer_pids(svc.home, job.id)))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_trainers, daemon=True)
        watcher.start()
        svc.kill9()
        assert trainer_pids(svc.home, job.id), "the trainer outlives the server"
        time.sleep(1.0)
        svc.start()
        client = svc.client
        assert status(client, job.id) in ("running", "succeeded"), "the job did not disappear"
        wait_for(lambda: status(client, job.id) == "succeeded", timeout=200)
        stop_watching.set()
        watcher.join()
        assert max(most_alive) == 1, "never two trainers for one job"
        run = svc.home / "runs" / job.id
        attempts = (run / "attempts.jsonl").read_text().splitlines()
        assert len(attempts) == 1, "the restarted server adopted the run instead of starting another"
        events = events_of(client, job.id)
        messages = [e.message for e in events]
        assert messages.count("The job has successfully completed") == 1
        assert messages.count("Fine-tuning job started") == 1
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert sorted(steps) == list(range(1, CRASH_EPOCHS * 5 + 1)), "every step trained exactly once"
        assert json.loads((run / "output" / "manifest.json").read_text())
    finally:
        svc.stop()
