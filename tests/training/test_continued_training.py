"""Continued training: a spec's ``init_adapter`` starts from an earlier adapter (trainable), not from a
new one. The continued run starts at the adapter's loss level, ends as an adapter plain peft reloads,
and an adapter that does not fit the base or the peft type is refused (exit 2, field named)."""

import json
import re
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import chat_rows, read_events, run_trainer, write_jsonl
from tuneplane_training.model import ModelSpecError
from tuneplane_training.run import train
from tuneplane_training.spec import SpecError, load_spec

PROBE = "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"


def _logits(model, tokenizer):
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _metrics(output_dir):
    return [e["data"] for e in read_events(output_dir) if e["type"] == "metrics"]


@pytest.fixture(scope="module")
def adapter_a(tmp_path_factory, tiny_model_dir):
    """Adapter A: LoRA on data X (the first 8 rows), validated on data Y (4 other rows)."""
    folder = tmp_path_factory.mktemp("adapter_a")
    rows = chat_rows(12)
    spec = {
        "spec_version": 1, "job_id": "ftjob-a", "base_model": str(tiny_model_dir),
        "training_file": str(write_jsonl(folder / "x.jsonl", rows[:8])),
        "validation_file": str(write_jsonl(folder / "y.jsonl", rows[8:])),
        "seed": 7, "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 3e-2, "max_seq_length": 256},
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    train(load_spec(folder / "spec.json"), folder / "out")
    return folder


def _continue_spec(tmp_path, adapter_a, tiny_model_dir, **extra):
    spec = {
        "spec_version": 1, "job_id": "ftjob-b", "base_model": str(tiny_model_dir),
        "training_file": str(adapter_a / "y.jsonl"),
        "seed": 11,  # a different seed: a fresh adapter would start elsewhere, the loaded one may not
        # r/alpha differ from A on purpose: the adapter's own values must win.
        "peft": {"type": "lora", "r": 2, "alpha": 4, "dropout": 0.0},
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 256},
        "init_adapter": str(adapter_a / "out"),
        **extra,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_continued_run_starts_from_the_adapter_and_reloads_with_plain_peft(tmp_path, adapter_a, tiny_model_dir):
    a_final = _metrics(adapter_a / "out")[-1]
    a_valid_loss = a_final["valid_loss"]
    assert a_valid_loss is not None

    out = tmp_path / "out"
    result = train(load_spec(_continue_spec(tmp_path, adapter_a, tiny_model_dir)), out)
    losses = [m["train_loss"] for m in _metrics(out) if m["train_loss"] is not None]
    # Step 1 sees all of Y in one batch before any update: exactly A's last validation loss on Y.
    assert losses[0] == pytest.approx(a_valid_loss, abs=1e-3), (losses, a_valid_loss)
    assert losses[-1] < losses[0], losses

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16  # from A, not from the spec
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(adapter_a / "out")
    assert any("Continuing training from the adapter" in e["message"] for e in read_events(out))

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(out))
    assert (_logits(reloaded, result.tokenizer) - _logits(result.model, result.tokenizer)).abs().max().item() < 1e-4
    # It moved on from A: the continued adapter is not A any more.
    base_a = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model_a = PeftModel.from_pretrained(base_a, str(adapter_a / "out"))
    assert (_logits(model_a, result.tokenizer) - _logits(reloaded, result.tokenizer)).abs().max().item() > 1e-3


def test_init_adapter_is_resolved_relative_to_the_spec(tmp_path, adapter_a, tiny_model_dir):
    shutil.copytree(adapter_a / "out", tmp_path / "parent", ignore=shutil.ignore_patterns("checkpoints"))
    spec = load_spec(_continue_spec(tmp_path, adapter_a, tiny_model_dir, init_adapter="parent"))
    assert spec.init_adapter == str(tmp_path / "parent")
    with pytest.raises(SpecError, match="init_adapter: no such adapter folder nowhere"):
        load_spec(_continue_spec(tmp_path, adapter_a, tiny_model_dir, init_adapter="nowhere"))
    with pytest.raises(SpecError, match="init_adapter: full fine-tuning cannot start from an adapter"):
        load_spec(_continue_spec(tmp_path, adapter_a, tiny_model_dir, peft={"type": "full"}))


def _misfit_parent(tmp_path, adapter_a, case):
    parent = tmp_path / "parent"
    shutil.copytree(adapter_a / "out", parent, ignore=shutil.ignore_patterns("checkpoints"))
    extra = {"init_adapter": str(parent)}
    if case == "dora":
        extra["peft"] = {"type": "dora"}
    elif case == "other_base":
        config = json.loads((parent / "adapter_config.json").read_text())
        (parent / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere/model"}))
        (parent / "manifest.json").unlink()
    else:
        (parent / "adapter_config.json").unlink()
    return extra


MISFITS = {
    "dora": "spec field peft.type: init_adapter is a LoRA adapter, so peft.type must be lora or qlora, not dora",
    "other_base": "spec field init_adapter: the adapter was trained on '/elsewhere/model', not on base_model",
    "not_adapter": "spec field init_adapter: .* is not a PEFT adapter folder",
}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_an_adapter_that_does_not_fit_is_refused_naming_the_field(tmp_path, adapter_a, tiny_model_dir, case):
    spec = load_spec(_continue_spec(tmp_path, adapter_a, tiny_model_dir, **_misfit_parent(tmp_path, adapter_a, case)))
    with pytest.raises(ModelSpecError, match=MISFITS[case]):
        train(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_the_trainer_exits_2_for_a_misfit_adapter(tmp_path, adapter_a, tiny_model_dir):
    out = tmp_path / "out"
    # The misfit comes through --init-adapter (how Azure ML passes its mount), replacing the spec's good one.
    parent = _misfit_parent(tmp_path, adapter_a, "other_base")["init_adapter"]
    proc = run_trainer(_continue_spec(tmp_path, adapter_a, tiny_model_dir), out, timeout=180,
                       extra_args=["--init-adapter", parent])
    assert proc.returncode == 2, proc.stderr
    assert re.search(MISFITS["other_base"], proc.stderr), proc.stderr
    errors = [e for e in read_events(out) if e["level"] == "error"]
    assert errors and re.search(MISFITS["other_base"], errors[-1]["message"]), errors
    assert not (out / "adapter_model.safetensors").exists()
