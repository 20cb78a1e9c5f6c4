"""The pure memory, time and cost estimate (tuneplane.domain.estimate)."""

from __future__ import annotations

import pytest

from tuneplane.domain import estimate as est
from tuneplane.domain.records import JobRecord


@pytest.mark.parametrize("name, billions", [
    ("SmolLM2-135M-Instruct", 0.135),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", 0.36),
    ("meta-llama/Llama-3.1-8B-Instruct", 8.0),
    ("Qwen2.5-0.5B", 0.5),
    ("mistralai/Mixtral-8x7B-v0.1", 56.0),
    ("ft:Llama-3.1-70B:proj:s:ftjob-1", 70.0),
    ("tiny-random-llama", 0.00001),
])
def test_parameter_counts_come_from_the_name_or_the_table(name, billions):
    assert est.model_parameters_b(name) == pytest.approx(billions)


def test_an_unsizable_model_is_an_error_naming_it():
    with pytest.raises(est.EstimateError, match="my-model"):
        est.model_parameters_b("my-model")
    assert est.model_parameters_b("my-model", {"my-model": 3.0}) == 3.0


def test_memory_rule_orders_peft_types_and_shards_full_fine_tuning():
    full, lora, dora, qlora = (est.memory_required_gb(8, t) for t in ("full", "lora", "dora", "qlora"))
    assert qlora < lora < dora < full
    assert full == pytest.approx(16 * 8 * 1.2 + 2, abs=0.01)
    assert lora == pytest.approx((2 * 8 + 0.16 * 8) * 1.2 + 2, abs=0.01)
    assert est.memory_required_gb(8, "full", gpus=8) == pytest.approx(16 * 1.2 + 2, abs=0.01)
    with pytest.raises(est.EstimateError, match="peft.type"):
        est.memory_required_gb(8, "prefix")


@pytest.mark.parametrize("model, peft, instance, count", [
    ("SmolLM2-135M-Instruct", "lora", "Standard_NC4as_T4_v3", 1),  # small: the cheapest GPU
    ("Llama-3.1-8B", "qlora", "Standard_NC4as_T4_v3", 1),  # 4-bit 8B fits 16 GB
    ("Llama-3.1-8B", "lora", "Standard_NC40ads_H100_v5", 1),  # 22.7 GB: needs more than a T4
    ("Llama-3.1-70B", "full", "Standard_ND96isr_H100_v5", 3),  # sharded over 24 GPUs
])
def test_compute_plan_picks_the_fewest_nodes_then_the_cheapest_compute(model, peft, instance, count):
    plan = est.plan_compute(est.model_parameters_b(model), peft)
    assert (plan.instance_type, plan.instance_count) == (instance, count)
    gpu = est.DEFAULT_INSTANCE_TYPES[instance].gpu_memory_gb
    assert plan.memory_required_gb <= gpu


def test_a_model_too_large_for_any_instance_is_an_error():
    with pytest.raises(est.EstimateError, match="does not fit"):
        est.plan_compute(2000, "lora")


def test_estimate_arithmetic():
    inputs = est.EstimateInputs(model="Llama-3.1-8B", peft_type="lora", training_bytes=40_000_000, n_epochs=3)
    result = est.estimate(inputs, mfu=0.5, startup_hours=0.1)
    assert result["trained_tokens"] == 30_000_000
    flops = 4 * 8e9 * 30_000_000
    hours = flops / (835e12 * 0.5) / 3600 + 0.1
    assert result["instance_type"] == "Standard_NC40ads_H100_v5"
    assert result["wall_clock_hours"] == pytest.approx(hours, rel=1e-3)
    assert result["gpu_hours"] == pytest.approx(hours, rel=1e-3)
    assert result["estimated_cost"] == {"amount": pytest.approx(hours * 6.98, rel=1e-3), "currency": "USD"}
    spot = est.estimate(inputs, mfu=0.5, startup_hours=0.1, tier="spot")
    assert spot["estimated_cost"]["amount"] < result["estimated_cost"]["amount"]
    more = est.estimate(est.EstimateInputs("Llama-3.1-8B", "lora", 40_000_000, 6), mfu=0.5, startup_hours=0.1)
    assert more["gpu_hours"] - 0.1 == pytest.approx(2 * (result["gpu_hours"] - 0.1), rel=1e-3)


def test_a_custom_price_table_changes_the_choice_and_the_price():
    table = est.parse_price_table({"Standard_NC4as_T4_v3": {"price_per_hour": 100.0},
                                   "Custom_GPU": {"gpus": 1, "gpu_memory_gb": 24, "tflops_bf16": 100,
                                                  "price_per_hour": 0.2, "spot_price_per_hour": 0.1}})
    result = est.estimate(est.EstimateInputs("SmolLM2-135M-Instruct", "lora", 4_000, 1), instance_types=table)
    assert result["instance_type"] == "Custom_GPU"
    assert result["assumptions"]["price_per_instance_hour"] == 0.2


@pytest.mark.parametrize("entry, field", [
    ({"gpus": 0}, "gpus"), ({"price_per_hour": -1}, "price_per_hour"), ({"gpus": True}, "gpus"), ({"colour": 1}, "colour"),
])
def test_a_bad_price_table_names_the_field(entry, field):
    with pytest.raises(est.EstimateError, match=f"Standard_NC6s_v3.{field}"):
        est.parse_price_table({"Standard_NC6s_v3": entry})
    with pytest.raises(est.EstimateError, match="New_GPU"):
        est.parse_price_table({"New_GPU": {"gpus": 1}})  # a new type must give every field


def _job(**extra) -> JobRecord:
    fields = dict(id="ftjob-1", project="p", created_at=1, status="queued", model="SmolLM2-135M-Instruct",
                  training_file="file-1", seed=1, compute="serverless",
                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    fields.update(extra)
    return JobRecord(**fields)


def test_estimate_for_job_reads_epochs_peft_and_method():
    sft = est.estimate_for_job(_job(), 400_000, 40_000)
    assert sft["n_epochs"] == 2 and sft["trained_tokens"] == 200_000 and sft["compute"] == "serverless"
    dpo = est.estimate_for_job(_job(method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}), 400_000, 40_000)
    assert dpo["gpu_hours"] == pytest.approx(2 * sft["gpu_hours"], rel=1e-3)
    assert est.estimate_for_job(_job(model="mystery-model"), 100) is None
