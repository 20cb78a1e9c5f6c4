"""Event-driven retraining end to end on this machine: a real uvicorn server with its reconciler, the
inbox watcher, the real trainer on the tiny model and the local deployer.

Drop a good dataset into ``${TUNEPLANE_HOME}/inbox/<container>/<path>/`` -> a job runs -> its model
is promoted (deployed, and answers chat). Drop a worse dataset -> its job runs -> its validation loss
does not beat the current model's, so it is not deployed and the policy keeps the first model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow

API_KEY = "tp-inbox-e2e-key"
CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
            ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Norway", "Oslo"), ("Greece", "Athens")]


def qa(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def good_data() -> bytes:
    rows = [qa(f"What is the capital of {c}?", f"The capital of {c} is {city}.") for c, city in CAPITALS] * 2
    return ("\n".join(rows) + "\n").encode()


def worse_data() -> bytes:
    # The same questions with noise for answers: training on it moves the model away from the
    # validation set, so its validation loss cannot beat the good model's.
    rng = random.Random(7)
    noise = lambda: " ".join("".join(rng.choice("qxzjvkw") for _ in range(6)) for _ in range(6))  # noqa: E731
    rows = [qa(f"What is the capital of {c}?", noise()) for c, _ in CAPITALS] * 2
    return ("\n".join(rows) + "\n").encode()


def validation_data() -> bytes:
    return ("\n".join(qa(f"What is the capital of {c}?", f"The capital of {c} is {city}.") for c, city in CAPITALS) + "\n").encode()


def drop(inbox: Path, relative: str, content: bytes) -> None:
    """As a careful copy tool does: write a hidden temporary name, then rename into place."""
    target = inbox / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_bytes(content)
    os.replace(temporary, target)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def service(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    env = os.environ | {
        "TUNEPLANE_HOME": str(home), "TUNEPLANE_PORT": str(port), "TUNEPLANE_API_KEY": API_KEY,
        "TUNEPLANE_RECONCILE_INTERVAL": "0.5", "TUNEPLANE_INBOX_SCAN_SECONDS": "0.5", "TUNEPLANE_INBOX_QUIET_SECONDS": "0.5",
        "TUNEPLANE_SERVING_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        with httpx.Client(base_url=base + "/v1", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
            yield client, home / "inbox"
    finally:
        stop(process)


def test_dropped_data_retrains_and_only_a_better_model_is_promoted(service):
    client, inbox = service
    validation = client.post("/files", data={"purpose": "fine-tune"},
                             files={"file": ("validation.jsonl", validation_data(), "application/jsonl")})
    assert validation.status_code == 200, validation.text
    policy = client.post("/retraining_policies", json={
        "name": "capitals", "blob_prefix": {"container": "training-data", "path": "support"},
        "model": "tiny-random-llama", "validation_file": validation.json()["id"],
        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10},
        "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "promotion": {"margin": 0.0},
    })
    assert policy.status_code == 200, policy.text
    policy_id = policy.json()["id"]

    def finished_jobs() -> list[dict]:
        jobs = client.get("/fine_tuning/jobs", params={"metadata[retraining_policy]": policy_id, "limit": 10}).json()["data"]
        return jobs if jobs and all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) else []

    drop(inbox, "training-data/support/good.jsonl", good_data())
    [first] = wait_for(finished_jobs, 240, "the first retraining job")
    assert first["status"] == "succeeded", first
    assert first["metadata"]["trigger_blob"] == "training-data/support/good.jsonl"
    assert first["metadata"]["parent_model"] == "tiny-random-llama"
    promoted = client.get(f"/retraining_policies/{policy_id}").json()
    assert promoted["promoted_model"] == first["fine_tuned_model"]
    assert promoted["promoted_valid_loss"] is not None
    chat = client.post("/chat/completions", json={"model": first["fine_tuned_model"], "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "What is the capital of Peru?"}]})
    assert chat.status_code == 200, chat.text  # promoted = deployed: the model answers

    drop(inbox, "training-data/support/worse.jsonl", worse_data())
    jobs = wait_for(lambda: (found := finished_jobs()) and len(found) == 2 and found, 240, "the second retraining job")
    second = jobs[0]
    assert second["status"] == "succeeded", second
    assert second["metadata"]["trigger_blob"] == "training-data/support/worse.jsonl"
    print("second model:", second["deployment"].get("reason"))
    assert second["deployment"]["status"] == "not_promoted", second["deployment"]
    assert "does not beat the current model" in second["deployment"]["reason"]
    kept = client.get(f"/retraining_policies/{policy_id}").json()
    assert kept["promoted_model"] == first["fine_tuned_model"]
    assert kept["promoted_valid_loss"] == promoted["promoted_valid_loss"]
    events = [e["message"] for e in client.get(f"/fine_tuning/jobs/{second['id']}/events", params={"limit": 100}).json()["data"]]
    assert any(m.startswith("Not deployed:") for m in events)
    policy_events = [e["message"] for e in client.get(f"/retraining_policies/{policy_id}/events", params={"limit": 100}).json()["data"]]
    assert any(m.startswith(f"Not promoting {second['fine_tuned_model']}") for m in policy_events)
    assert any(m == f"Promoted {first['fine_tuned_model']}" for m in policy_events)
