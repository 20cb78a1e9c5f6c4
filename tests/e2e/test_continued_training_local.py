"""Continued training through the running service: fine-tune a LoRA adapter, then fine-tune that
``ft:`` model again with the official openai client. The real reconciler, local runner and
``tuneplane-train`` continue the parent adapter (``init_adapter``) on the same base, and the child keeps
the root base in its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_lifecycle_local import Service, events_of, upload, wait_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def _train(client, model: str, training_file: str, suffix: str, peft_type: str = "lora"):
    return client.fine_tuning.jobs.create(
        model=model, training_file=training_file, suffix=suffix, seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 5, "learning_rate_multiplier": 50}}},
        extra_body={"peft": {"type": peft_type, "r": 4, "alpha": 8, "dropout": 0.0}, "deploy": False},
    )


def _finished(client, job_id: str):
    def done():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=240)


def _losses(client, job_id: str) -> list[float]:
    return [e.data["train_loss"] for e in events_of(client, job_id) if e.type == "metrics" and e.data.get("train_loss") is not None]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("continued"), max_concurrent_jobs="1")
    svc.start()
    yield svc
    svc.stop()


def test_an_adapter_model_is_fine_tuned_further_from_where_it_left_off(service):
    client = service.client
    training = upload(client)
    parent = _finished(client, _train(client, "tiny-random-llama", training, "first").id)
    assert parent.status == "succeeded", parent.error
    assert parent.fine_tuned_model == f"ft:tiny-random-llama:default:first:{parent.id}"

    child = _finished(client, _train(client, parent.fine_tuned_model, training, "more").id)
    assert child.status == "succeeded", child.error
    assert child.model == parent.fine_tuned_model
    assert child.fine_tuned_model == f"ft:tiny-random-llama:default:more:{child.id}"  # the root base
    assert client.models.retrieve(child.fine_tuned_model).id == child.fine_tuned_model

    spec = json.loads((service.home / "runs" / child.id / "spec.json").read_text())
    assert spec["base_model"] == "tiny-random-llama"
    assert (Path(spec["init_adapter"]) / "adapter_model.safetensors").is_file()
    messages = [e.message for e in events_of(client, child.id)]
    assert any(m.startswith("Continuing training from the adapter") for m in messages)
    # The child starts from the parent's weights, not from a fresh adapter: its first loss on the
    # same data is well below the parent's first (untrained) loss (about 2 nats lower, measured).
    assert _losses(client, child.id)[0] < _losses(client, parent.id)[0] - 0.5

    # Full fine-tuning cannot continue an adapter: the job fails naming peft.type, before training.
    refused = _finished(client, _train(client, parent.fine_tuned_model, training, "full", peft_type="full").id)
    assert refused.status == "failed"
    assert (refused.error.code, refused.error.param) == ("invalid_peft", "peft.type")
    assert not (service.home / "runs" / refused.id / "output" / "events.jsonl").exists()
