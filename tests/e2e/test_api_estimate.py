"""The ``estimate`` extension and the dry run through the official openai client, on every backend."""

from __future__ import annotations

import io

from openai import OpenAI

from tests.conftest import chat_jsonl


def test_dry_run_estimates_and_creates_nothing_then_the_job_keeps_the_estimate(server):
    client = OpenAI(base_url=server.base_url + "/v1", api_key=server.key_for("estimates"), max_retries=0, timeout=60)
    training = client.files.create(file=("train.jsonl", io.BytesIO(chat_jsonl(40))), purpose="fine-tune")
    before = server.snapshot()
    dry = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        extra_body={"dry_run": True, "compute": "serverless", "peft": {"type": "lora"}},
    )
    estimate = dry.model_extra["estimate"]
    assert estimate["n_epochs"] == 2 and estimate["trained_tokens"] > 0 and estimate["gpu_hours"] > 0
    assert estimate["estimated_cost"]["currency"] == "USD" and estimate["peft_type"] == "lora"
    assert server.snapshot() == before  # nothing was created
    assert [j.id for j in client.fine_tuning.jobs.list()] == []
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        extra_body={"compute": "serverless", "peft": {"type": "lora"}},
    )
    assert job.model_extra["estimate"] == estimate
    assert client.fine_tuning.jobs.retrieve(job.id).model_extra["estimate"] == estimate
