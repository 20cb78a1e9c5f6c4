"""Distributed training: the launch decision and Trainer kwargs (fast), and DeepSpeed ZeRO-2/ZeRO-3,
torchrun DDP and FSDP each training the tiny model end to end with 2 CPU ranks over gloo (slow)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import chat_rows, read_events, run_trainer
from tuneplane_training import distributed
from tuneplane_training.distributed import DistributionError, launch_command, training_arguments_kwargs
from tuneplane_training.spec import SpecError, parse_spec


def _spec(**distribution):
    return parse_spec({"job_id": "ftjob-x", "base_model": "tiny-random-llama", "training_file": "train.jsonl",
                       "distribution": distribution})


# ---- launch decision -------------------------------------------------------------------------------

def test_single_process_runs_in_place():
    assert launch_command(_spec(type="none"), "s.json", "out", environ={}) is None
    assert launch_command(_spec(type="deepspeed", num_processes=1), "s.json", "out", environ={}) is None


def test_local_multi_process_relaunches_under_standalone_torchrun():
    command = launch_command(_spec(type="fsdp", num_processes=2), "/x/spec.json", "/x/out", environ={})
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command and "--standalone" in command
    assert command[-6:] == ["-m", "tuneplane_training.cli", "--spec", "/x/spec.json", "--output-dir", "/x/out"]


def test_inside_a_launcher_with_the_full_world_trains_in_place():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "NODE_RANK": "1"}
    assert launch_command(_spec(type="ddp", num_processes=2, num_nodes=2), "s", "o", environ=env) is None


def test_azure_ml_per_node_launch_runs_torchrun_with_the_node_rank_and_master():
    # process_count_per_instance=1: Azure ML starts one process per node, WORLD_SIZE == node count.
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0", "NODE_RANK": "1",
           "MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "6105"}
    command = launch_command(_spec(type="deepspeed", zero_stage=3, num_processes=4, num_nodes=2), "s", "o",
                             environ=env)
    assert "--standalone" not in command
    for flag in ("--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.4",
                 "--master-port=6105"):
        assert flag in command
    worker_env = distributed.worker_environment(env)
    assert "RANK" not in worker_env and "WORLD_SIZE" not in worker_env and worker_env["MASTER_ADDR"] == "10.0.0.4"


def test_master_from_az_batch_master_node_when_master_addr_is_absent():
    env = {"WORLD_SIZE": "2", "RANK": "0", "AZ_BATCH_MASTER_NODE": "10.0.0.9:29400"}
    command = launch_command(_spec(type="ddp", num_processes=2, num_nodes=2), "s", "o", environ=env)
    assert "--node-rank=0" in command and "--master-addr=10.0.0.9" in command and "--master-port=29400" in command


def test_multi_node_without_rendezvous_is_an_error_naming_the_variable():
    with pytest.raises(DistributionError, match="MASTER_ADDR"):
        launch_command(_spec(type="ddp", num_processes=2, num_nodes=2), "s", "o", environ={"WORLD_SIZE": "2", "RANK": "0"})


def test_launcher_world_size_that_disagrees_with_the_spec_is_a_spec_error():
    with pytest.raises(SpecError, match="distribution.*WORLD_SIZE=3"):
        launch_command(_spec(type="ddp", num_processes=2), "s", "o", environ={"WORLD_SIZE": "3", "LOCAL_RANK": "0"})


# ---- Trainer kwargs --------------------------------------------------------------------------------

def test_kwargs_per_type():
    assert training_arguments_kwargs(_spec(type="none")) == {}
    ddp = training_arguments_kwargs(_spec(type="ddp", num_processes=2))
    assert ddp["ddp_backend"] == "gloo" and ddp["ddp_find_unused_parameters"] is False
    fsdp = training_arguments_kwargs(_spec(type="fsdp", num_processes=2))
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    for stage in (1, 2, 3):
        config = training_arguments_kwargs(_spec(type="deepspeed", zero_stage=stage), environ={})["deepspeed"]
        assert config["zero_optimization"]["stage"] == stage
        # Batch sizes, clipping and precision come from the spec through the HF integration.
        assert config["train_micro_batch_size_per_gpu"] == "auto" and config["bf16"]["enabled"] == "auto"


def test_bundled_configs_resolve_every_auto_value_through_transformers():
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=3, gradient_accumulation_steps=2,
                             learning_rate=1e-3, use_cpu=True, report_to="none")
    for name in ("deepspeed_zero2.json", "deepspeed_zero3.json", "deepspeed_zero3_offload.json"):
        config = HfTrainerDeepSpeedConfig(json.loads((distributed.CONFIG_DIR / name).read_text()))
        config.trainer_config_process(args)

        class _Config:
            hidden_size = 64
        class _Model:
            config = _Config()
        config.trainer_config_finalize(args, _Model(), num_training_steps=10)
        assert "auto" not in json.dumps(config.config), name
        assert config.config["train_micro_batch_size_per_gpu"] == 3


def test_deepspeed_config_override_must_match_the_zero_stage(tmp_path):
    env = {distributed.DEEPSPEED_CONFIG_ENV: "deepspeed_zero3_offload.json"}
    offload = distributed.deepspeed_config(3, env)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(SpecError, match="zero_stage is 2"):
        distributed.deepspeed_config(2, env)
    broken = tmp_path / "ds.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match="TUNEPLANE_DEEPSPEED_CONFIG.*line 1"):
        distributed.deepspeed_config(2, {distributed.DEEPSPEED_CONFIG_ENV: str(broken)})


# ---- end to end with 2 CPU ranks ---------------------------------------------------------------------

N_EXAMPLES, BATCH, EPOCHS, RANKS = 24, 4, 3, 2


def _check_checkpoint_layout(checkpoint: Path, kind: str) -> None:
    files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files, files  # each rank's RNG, for exact resume
    if kind == "deepspeed":
        # DeepSpeed's own engine state: one optimizer-state shard per rank.
        assert any(f.endswith("zero_pp_rank_0_mp_rank_00_optim_states.pt") for f in files), files
        assert any(f.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for f in files), files
    elif kind == "fsdp":
        # FSDP's own full-state-dict files prove the model was sharded, not silently run as DDP.
        assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= files, files
    else:
        assert "optimizer.pt" in files and "pytorch_model_fsdp.bin" not in files, files


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("distribution", [
    {"type": "deepspeed", "zero_stage": 2},
    {"type": "deepspeed", "zero_stage": 3},
    {"type": "fsdp"},
    {"type": "ddp"},
], ids=["zero2", "zero3", "fsdp", "ddp"])
def test_two_cpu_ranks_train_end_to_end(tmp_path, make_spec, tiny_model_dir, distribution):
    spec_path = make_spec(tmp_path, rows=chat_rows(N_EXAMPLES),
                          hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 1e-2},
                          distribution={**distribution, "num_processes": RANKS})
    out = tmp_path / "out"
    result = run_trainer(spec_path, out, timeout=540)
    assert result.returncode == 0, result.stderr[-4000:]

    # Each rank sees half the examples per step, so an epoch has half the steps of a 1-process run.
    steps_per_epoch = math.ceil(N_EXAMPLES / (BATCH * RANKS))
    events = read_events(out)
    metrics = [e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
    steps = [m["step"] for m in metrics]
    assert steps == list(range(1, steps_per_epoch * EPOCHS + 1)), steps  # written once, by rank 0 only
    losses = [m["train_loss"] for m in metrics]
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-steps_per_epoch:]) < sum(losses[:steps_per_epoch]), losses
    assert sum("successfully completed" in e["message"] for e in events) == 1

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == steps_per_epoch * EPOCHS
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == [steps_per_epoch * e for e in range(1, EPOCHS + 1)]
    _check_checkpoint_layout(checkpoints[-1], distribution["type"])

    # The adapter is whole (not a ZeRO-3/FSDP shard) and reloads with plain peft.
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(str(out / "adapter_model.safetensors"))
    hidden = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).config.hidden_size
    a_weights = [t for k, t in saved.items() if k.endswith("lora_A.weight")]
    assert a_weights and all(t.shape[0] == 8 and t.numel() > 0 for t in a_weights)
    assert any(t.shape[1] == hidden for t in a_weights)
    assert all(t.abs().sum() > 0 for k, t in saved.items() if k.endswith("lora_B.weight"))  # it trained

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.tensor([[1, 42, 77, 9, 300, 12]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(out)).eval()
        tuned_logits = tuned(input_ids=ids).logits
    assert torch.isfinite(tuned_logits).all()
    assert (tuned_logits - base_logits).abs().max() > 1e-4
