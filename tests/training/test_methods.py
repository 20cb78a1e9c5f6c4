"""Each peft method trains the tiny model, lowers its loss, and saves weights that plain
transformers/peft reload to the same logits. DPO raises preference accuracy on its training pairs."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from tuneplane_training.data import ChatRenderer, load_preference_pairs
from tuneplane_training.loop import sequence_logprobs
from tuneplane_training.packing import PaddedCollator
from tuneplane_training.run import train
from tuneplane_training.spec import load_spec

PROBE = "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"


def _train_losses(output_dir):
    events = [json.loads(line) for line in (output_dir / "events.jsonl").read_text().splitlines()]
    return [e["data"]["train_loss"] for e in events if e["type"] == "metrics" and e["data"]["train_loss"] is not None]


def _logits(model, tokenizer):
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("peft_type, lr", [("lora", 2e-2), ("dora", 2e-2), ("qlora", 2e-2), ("full", 3e-3)])
def test_method_trains_and_reloads(tmp_path, make_spec, tiny_model_dir, peft_type, lr):
    spec = load_spec(make_spec(tmp_path, peft={"type": peft_type}, packing=peft_type == "lora",
                               hyperparameters={"n_epochs": 2, "learning_rate": lr}))
    out = tmp_path / "out"
    result = train(spec, out)
    losses = _train_losses(out)
    # 12 examples, batch 4, 2 epochs: 6 steps; packed (lora) rows hold several examples each.
    assert len(losses) == (6 if peft_type != "lora" else 2)
    assert losses[-1] < losses[0] - 0.5, losses

    if peft_type == "full":
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    else:
        assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["use_dora"] is (peft_type == "dora")
        extra = {}
        if peft_type == "qlora":
            extra = {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32), "device_map": {"": "cpu"}}
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, **extra)
        if peft_type == "qlora":
            assert type(base.model.layers[0].mlp.up_proj.weight).__name__ == "Params4bit"
        reloaded = PeftModel.from_pretrained(base, str(out))
    assert (out / "tokenizer.json").is_file()
    diff = (_logits(reloaded, result.tokenizer) - _logits(result.model, result.tokenizer)).abs().max().item()
    assert diff < 1e-4, diff
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["peft"]["type"] == peft_type and manifest["trained_tokens"] == result.trained_tokens > 0


def test_dpo_raises_preference_accuracy(tmp_path, make_spec, tiny_tokenizer):
    spec = load_spec(make_spec(tmp_path, method={"type": "dpo", "dpo": {"beta": 0.5}},
                               hyperparameters={"n_epochs": 3, "learning_rate": 2e-2, "batch_size": 4}))
    pairs, _ = load_preference_pairs(spec.training_file, ChatRenderer(tiny_tokenizer), 256, "truncate", "training_file")
    batch = PaddedCollator(tiny_tokenizer.pad_token_id)([p.chosen for p in pairs] + [p.rejected for p in pairs])

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            policy, _ = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
            with model.disable_adapter():
                reference, _ = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        n = len(pairs)
        margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
        return (margin > 0).float().mean().item()

    out = tmp_path / "out"
    result = train(spec, out)
    # An untrained adapter (B = 0) is the reference: no pair is preferred yet.
    base = AutoModelForCausalLM.from_pretrained(str(spec.base_model))
    untrained = PeftModel.from_pretrained(base, str(out))
    for module in untrained.modules():
        if hasattr(module, "lora_B"):
            for layer in module.lora_B.values():
                torch.nn.init.zeros_(layer.weight)
    assert accuracy(untrained) == 0.0
    assert accuracy(result.model) >= 0.75
    losses = _train_losses(out)
    assert losses[-1] < losses[0]
    metrics = [e["data"] for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["type"] == "metrics"]
    assert metrics[0]["train_reward_accuracy"] == 0.0 and metrics[-1]["train_reward_accuracy"] > 0.5
