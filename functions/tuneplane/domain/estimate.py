"""Memory, time and cost estimates for a fine-tuning job. Pure: no I/O, no clock.

The numbers are deliberately simple rules of thumb, written down so that an operator can check
them and override the inputs (the price table, the utilisation) instead of trusting a black box.

Memory (GB, per GPU), for a model of P billion parameters, bf16 compute:

| peft  | model states                                   | rule                         |
|-------|------------------------------------------------|------------------------------|
| full  | bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m,v 8 = 16 B/param, sharded by ZeRO-3 across all GPUs | 16·P / gpus |
| lora  | frozen bf16 weights 2 B/param + adapter states (~1% of P at 16 B) | 2·P + 0.16·P |
| dora  | as lora, plus the magnitude vectors and their activations (+10%) | 1.1·(2·P + 0.16·P) |
| qlora | 4-bit weights 0.5 B/param + quantisation constants 0.05 + adapter | 0.55·P + 0.16·P |

Activations, the CUDA context and fragmentation add 20% plus 2 GB. Adapters replicate the base on
every GPU (data parallel), so their need must fit one GPU; full fine-tuning shards with ZeRO-3, so
its need must fit the GPUs of the instance(s) together.

Time: training FLOPs are 6·P·tokens for full fine-tuning (forward 2, backward 4) and 4·P·tokens
for adapters (no weight gradients for the frozen base); qlora pays ~30% more for dequantisation.
Throughput is the instance's peak bf16 TFLOPS times a model-FLOPs utilisation (35% by default).
Every run also pays a fixed start-up (image pull, model download): 0.15 h by default.

Tokens: an uploaded JSONL file holds about one token per 4 bytes (JSON syntax included, so this
leans high, which is the safe side for a budget).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu_memory_gb: float
    tflops_bf16: float  # peak dense bf16 (fp16 for GPUs without bf16) per GPU
    price_per_hour: float  # USD per instance-hour, standard (dedicated) tier
    spot_price_per_hour: float  # USD per instance-hour, spot (low-priority) tier


# Azure ML serverless / cluster VM sizes with NVIDIA GPUs. Prices are approximate pay-as-you-go
# list prices (USD); pass your own table to the functions below for your region and agreement.
DEFAULT_INSTANCE_TYPES: dict[str, InstanceType] = {
    t.name: t
    for t in (
        InstanceType("Standard_NC4as_T4_v3", 1, 16, 65, 0.53, 0.11),
        InstanceType("Standard_NC6s_v3", 1, 16, 125, 3.06, 0.61),
        InstanceType("Standard_NC24ads_A100_v4", 1, 80, 312, 3.67, 0.73),
        InstanceType("Standard_NC48ads_A100_v4", 2, 80, 312, 7.35, 1.47),
        InstanceType("Standard_NC96ads_A100_v4", 4, 80, 312, 14.69, 2.94),
        InstanceType("Standard_ND96asr_v4", 8, 40, 312, 27.20, 5.44),
        InstanceType("Standard_ND96amsr_A100_v4", 8, 80, 312, 32.77, 6.55),
        InstanceType("Standard_NC40ads_H100_v5", 1, 94, 835, 6.98, 1.40),
        InstanceType("Standard_ND96isr_H100_v5", 8, 80, 989, 98.32, 19.66),
    )
}

# Parameter counts (billions) of models whose names do not say it.
KNOWN_PARAMETERS_B: dict[str, float] = {
    "tiny-random-llama": 0.00001,
    "gpt2": 0.124,
}

PEFT_TYPES = ("lora", "qlora", "dora", "full")
BYTES_PER_TOKEN = 4.0
DEFAULT_MFU = 0.35
DEFAULT_STARTUP_HOURS = 0.15
MAX_NODES = 16
_SIZE = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*([mMbB])(?![a-zA-Z])")


class EstimateError(ValueError):
    """The inputs cannot produce an estimate; the message names the input."""


def model_parameters_b(model: str, known: dict[str, float] | None = None) -> float:
    """Billions of parameters, from the table or from the name ("SmolLM2-135M", "Llama-3.1-8B",
    "Mixtral-8x7B" counts 8·7). Raises EstimateError when neither says it."""
    table = {**KNOWN_PARAMETERS_B, **(known or {})}
    base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model
    for name in (base, base.rsplit("/", 1)[-1]):
        if name in table:
            return table[name]
    tail = base.rsplit("/", 1)[-1]
    experts = re.search(r"(\d+)x(\d+(?:\.\d+)?)([bB])", tail)
    if experts:
        return int(experts.group(1)) * float(experts.group(2))
    match = _SIZE.search(tail)
    if match:
        value = float(match.group(1))
        return value / 1000 if match.group(2) in "mM" else value
    raise EstimateError(f"model: cannot tell the parameter count of {model!r}; add it to the known-parameters table")


def memory_required_gb(parameters_b: float, peft_type: str, gpus: int = 1) -> float:
    """GB one GPU needs (see the module docstring for the rule)."""
    if peft_type not in PEFT_TYPES:
        raise EstimateError(f"peft.type: unknown {peft_type!r}; expected one of {', '.join(PEFT_TYPES)}")
    adapter = 0.16 * parameters_b
    states = {
        "full": 16 * parameters_b / max(1, gpus),
        "lora": 2 * parameters_b + adapter,
        "dora": 1.1 * (2 * parameters_b + adapter),
        "qlora": 0.55 * parameters_b + adapter,
    }[peft_type]
    return round(states * 1.2 + 2.0, 2)


@dataclass(frozen=True)
class ComputePlan:
    instance_type: str
    instance_count: int
    gpus_per_instance: int
    memory_required_gb: float  # per GPU, for this plan

    @property
    def total_gpus(self) -> int:
        return self.instance_count * self.gpus_per_instance


def plan_compute(
    parameters_b: float,
    peft_type: str,
    *,
    instance_types: dict[str, InstanceType] | None = None,
    tier: str = "standard",
) -> ComputePlan:
    """The instance type and node count for a job, by the memory rule: the fewest nodes whose GPUs
    hold it, then the lowest price per unit of compute, then the lowest hourly price."""
    types = instance_types or DEFAULT_INSTANCE_TYPES
    best: tuple[int, float, float, ComputePlan] | None = None
    for t in types.values():
        for count in range(1, MAX_NODES + 1):
            gpus = t.gpus * count
            need = memory_required_gb(parameters_b, peft_type, gpus if peft_type == "full" else 1)
            if need <= t.gpu_memory_gb:
                price = (t.spot_price_per_hour if tier == "spot" else t.price_per_hour) * count
                # Fewest nodes first (inter-node links are the slowest part), then the price of a
                # unit of compute (a faster GPU finishes sooner), then the hourly price.
                rank = price / (t.tflops_bf16 * gpus)
                plan = ComputePlan(t.name, count, t.gpus, need)
                if best is None or (count, rank, price) < best[:3]:
                    best = (count, rank, price, plan)
                break
            if peft_type != "full":
                break  # adapters replicate the base: more nodes do not lower the per-GPU need
    if best is None:
        raise EstimateError(
            f"model: a {parameters_b:g}B model with peft.type {peft_type} does not fit any known instance type"
        )
    return best[3]


def instance_plan(
    instance_type: str,
    parameters_b: float,
    peft_type: str,
    *,
    instance_count: int = 1,
    instance_types: dict[str, InstanceType] | None = None,
) -> ComputePlan:
    """The plan for an instance type the caller chose (a cluster's VM size)."""
    types = instance_types or DEFAULT_INSTANCE_TYPES
    if instance_type not in types:
        raise EstimateError(f"instance_type: {instance_type!r} is not in the price table")
    t = types[instance_type]
    gpus = t.gpus * instance_count
    return ComputePlan(instance_type, instance_count, t.gpus,
                       memory_required_gb(parameters_b, peft_type, gpus if peft_type == "full" else 1))


@dataclass(frozen=True)
class EstimateInputs:
    model: str
    peft_type: str
    training_bytes: int
    n_epochs: int
    validation_bytes: int = 0
    known_parameters_b: dict[str, float] = field(default_factory=dict)


def estimate_tokens(n_bytes: int) -> int:
    return int(math.ceil(max(0, n_bytes) / BYTES_PER_TOKEN))


def estimate(
    inputs: EstimateInputs,
    plan: ComputePlan | None = None,
    *,
    tier: str = "standard",
    instance_types: dict[str, InstanceType] | None = None,
    mfu: float = DEFAULT_MFU,
    startup_hours: float = DEFAULT_STARTUP_HOURS,
) -> dict[str, Any]:
    """The ``estimate`` extension object of a job: tokens, GPU-hours, wall-clock hours and cost."""
    if tier not in ("standard", "spot"):
        raise EstimateError(f"tier: expected standard or spot, not {tier!r}")
    if inputs.n_epochs < 1:
        raise EstimateError("n_epochs: must be at least 1")
    if not 0 < mfu <= 1:
        raise EstimateError("mfu: must be in (0, 1]")
    types = instance_types or DEFAULT_INSTANCE_TYPES
    parameters_b = model_parameters_b(inputs.model, inputs.known_parameters_b)
    plan = plan or plan_compute(parameters_b, inputs.peft_type, instance_types=types, tier=tier)
    instance = types[plan.instance_type]
    tokens_per_epoch = estimate_tokens(inputs.training_bytes)
    trained_tokens = tokens_per_epoch * inputs.n_epochs
    flops_per_token = (6.0 if inputs.peft_type == "full" else 4.0) * parameters_b * 1e9
    if inputs.peft_type == "qlora":
        flops_per_token *= 1.3
    # Validation is a forward pass (2·P per token) once per epoch.
    flops = flops_per_token * trained_tokens + 2.0 * parameters_b * 1e9 * estimate_tokens(inputs.validation_bytes) * inputs.n_epochs
    throughput = plan.total_gpus * instance.tflops_bf16 * 1e12 * mfu
    wall_hours = flops / throughput / 3600 + startup_hours
    price = instance.spot_price_per_hour if tier == "spot" else instance.price_per_hour
    return {
        "object": "fine_tuning.job.estimate",
        "trained_tokens": trained_tokens,
        "model_parameters_b": parameters_b,
        "peft_type": inputs.peft_type,
        "instance_type": plan.instance_type,
        "instance_count": plan.instance_count,
        "gpus": plan.total_gpus,
        "tier": tier,
        "memory_required_gb_per_gpu": plan.memory_required_gb,
        "gpu_memory_gb": instance.gpu_memory_gb,
        "wall_clock_hours": round(wall_hours, 4),
        "gpu_hours": round(wall_hours * plan.total_gpus, 4),
        "estimated_cost": {"amount": round(wall_hours * plan.instance_count * price, 4), "currency": "USD"},
        "assumptions": {
            "bytes_per_token": BYTES_PER_TOKEN,
            "mfu": mfu,
            "startup_hours": startup_hours,
            "price_per_instance_hour": price,
        },
    }


def parse_price_table(data: dict[str, Any]) -> dict[str, InstanceType]:
    """A price table from JSON (``{"Standard_X": {"gpus": 1, "gpu_memory_gb": 80, ...}}``) merged
    over the defaults; errors name the instance type and field."""
    table = dict(DEFAULT_INSTANCE_TYPES)
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise EstimateError(f"price table {name}: must be an object")
        base = DEFAULT_INSTANCE_TYPES.get(name)
        values: dict[str, Any] = {}
        for key in ("gpus", "gpu_memory_gb", "tflops_bf16", "price_per_hour", "spot_price_per_hour"):
            value = entry.get(key, getattr(base, key) if base else None)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "gpus" and value < 1):
                raise EstimateError(f"price table {name}.{key}: must be a non-negative number")
            values[key] = value
        unknown = set(entry) - set(values)
        if unknown:
            raise EstimateError(f"price table {name}.{sorted(unknown)[0]}: unknown field")
        table[name] = InstanceType(name=name, gpus=int(values["gpus"]), gpu_memory_gb=float(values["gpu_memory_gb"]),
                                   tflops_bf16=float(values["tflops_bf16"]), price_per_hour=float(values["price_per_hour"]),
                                   spot_price_per_hour=float(values["spot_price_per_hour"]))
    return table


def estimate_for_job(
    job: Any,
    training_bytes: int,
    validation_bytes: int = 0,
    *,
    tier: str = "standard",
    instance_types: dict[str, InstanceType] | None = None,
    known_parameters_b: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """The ``estimate`` extension for a job record (tuneplane.domain.records.JobRecord) and the
    sizes of its files. The jobs service calls it at creation and for ``dry_run``.

    None when the model's size is unknown: a job is never refused for lack of an estimate.
    """
    method_type = job.method.get("type", "supervised")
    hyperparameters = (job.method.get(method_type) or {}).get("hyperparameters") or {}
    n_epochs = hyperparameters.get("n_epochs")
    n_epochs = n_epochs if isinstance(n_epochs, int) and not isinstance(n_epochs, bool) and n_epochs >= 1 else 1
    inputs = EstimateInputs(
        model=job.model,
        peft_type=str((job.peft or {}).get("type", "lora")),
        training_bytes=training_bytes,
        n_epochs=n_epochs,
        validation_bytes=validation_bytes,
        known_parameters_b=dict(known_parameters_b or {}),
    )
    try:
        result = estimate(inputs, tier=tier, instance_types=instance_types)
    except EstimateError:
        return None
    # DPO scores a chosen and a rejected completion for every prompt, with a reference pass.
    if method_type == "dpo":
        for key in ("wall_clock_hours", "gpu_hours"):
            result[key] = round(result[key] * 2, 4)
        result["estimated_cost"]["amount"] = round(result["estimated_cost"]["amount"] * 2, 4)
    result["compute"] = job.compute
    result["n_epochs"] = n_epochs
    return result
