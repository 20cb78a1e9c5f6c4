"""The training spec: the one JSON document the control plane hands to the trainer (version 1).

Every field, default and rule is documented in ``training/SPEC.md``; the JSON Schema generated from
these models is ``spec.schema.json`` next to this file (``python -m tuneplane_training.spec`` rewrites
it). The models forbid unknown fields so that a typo in a spec fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPEC_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("spec.schema.json")


class SpecError(ValueError):
    """The spec is invalid; the message names the field (exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DpoSpec(_Strict):
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference.")


class MethodSpec(_Strict):
    type: Literal["supervised", "dpo"] = "supervised"
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="Used only when type is dpo.")


class PeftSpec(_Strict):
    type: Literal["lora", "qlora", "dora", "full"] = "lora"
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description='Module names to adapt, or "all-linear" for every linear layer except the output head.'
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be \"all-linear\"")
        return value


class HyperparametersSpec(_Strict):
    n_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(4, ge=1, description="Examples (or packs, with packing) per device per micro-step.")
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0, description="Overrides warmup_ratio when > 0.")
    max_seq_length: int = Field(2048, ge=8)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (short runs, smoke tests).")

    @field_validator("learning_rate")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class DistributionSpec(_Strict):
    type: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    zero_stage: Literal[1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (deepspeed only).")
    num_processes: int = Field(1, ge=1, description="Processes per node.")
    num_nodes: int = Field(1, ge=1)


class CheckpointSpec(_Strict):
    every_n_steps: int | None = Field(None, ge=1, description="Also checkpoint every N optimizer steps (always at each epoch end).")
    keep_last: int = Field(3, ge=1, description="How many complete checkpoints to keep.")


class TrainingSpec(_Strict):
    """Version 1 of the trainer's input contract."""

    spec_version: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=200)
    base_model: str = Field(min_length=1, description="Catalog name, local Hugging Face folder, or Hugging Face id.")
    training_file: str = Field(min_length=1, description="Path to OpenAI chat JSONL (supervised) or preference JSONL (dpo).")
    validation_file: str | None = None
    method: MethodSpec = Field(default_factory=MethodSpec)
    peft: PeftSpec = Field(default_factory=PeftSpec)
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    packing: bool = False
    truncation: Literal["truncate", "drop"] = "truncate"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp32."
    )
    distribution: DistributionSpec = Field(default_factory=DistributionSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resume: str = Field("auto", description='"auto", "never", or the path of a checkpoint folder.')
    init_adapter: str | None = Field(
        None,
        description="Continue training this PEFT adapter folder (trained on the same base_model): it is loaded "
                    "trainable instead of a new adapter; its r, alpha, dropout and target modules apply, and "
                    "peft.type must match it (dora for a DoRA adapter, lora or qlora otherwise).",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _method_shorthand(cls, value: Any) -> Any:
        # "method": "dpo" is accepted as shorthand for {"type": "dpo"}.
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingSpec":
        if self.method.type == "dpo" and self.packing:
            raise ValueError("packing: not supported with method dpo (pairs are scored whole)")
        if self.method.type == "dpo" and self.peft.type == "full":
            raise ValueError("peft.type: dpo needs an adapter (lora, qlora or dora); the reference is the base with the adapter disabled")
        if self.init_adapter is not None and self.peft.type == "full":
            raise ValueError("init_adapter: full fine-tuning cannot start from an adapter; set peft.type to the "
                             "adapter's type (lora, qlora or dora)")
        if self.peft.type == "qlora" and self.distribution.type in ("fsdp", "deepspeed"):
            raise ValueError("distribution.type: qlora runs with none or ddp only")
        return self

    @property
    def world_size(self) -> int:
        return self.distribution.num_processes * self.distribution.num_nodes


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts union branch names (e.g. "list[str]") in loc; they are noise for a reader.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"literal['all-linear']", "function-after"}))]
    return ".".join(parts) or "spec"


def parse_spec(data: Any) -> TrainingSpec:
    try:
        return TrainingSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"]))
        message = first["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        raise SpecError(f"spec field {field}: {message}") from exc


def load_spec(path: str | Path, *, init_adapter: str | None = None) -> TrainingSpec:
    """Read and validate a spec file; raise ``SpecError`` naming the offending field.

    ``init_adapter`` (the CLI's ``--init-adapter``) replaces the spec's: a job system that mounts the
    adapter at a path known only at run time (Azure ML's ``${{inputs.init_adapter}}``) passes it so."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"spec: cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise SpecError("spec: must be a JSON object")
    if init_adapter is not None:
        data = {**data, "init_adapter": str(Path(init_adapter).resolve())}  # relative to the working directory
    spec = parse_spec(data)
    # Relative paths are relative to the spec file, so a spec and its data can move together.
    base = path.resolve().parent
    resolved: dict[str, str] = {}
    for field in ("training_file", "validation_file"):
        value = getattr(spec, field)
        if value is None:
            continue
        if not (base / value).is_file():
            raise SpecError(f"spec field {field}: no such file {value}")
        resolved[field] = str(base / value)
    if spec.resume not in ("auto", "never"):
        if not (base / spec.resume).is_dir():
            raise SpecError(f"spec field resume: no such checkpoint folder {spec.resume}")
        resolved["resume"] = str(base / spec.resume)
    if spec.init_adapter is not None:
        if not (base / spec.init_adapter).is_dir():
            raise SpecError(f"spec field init_adapter: no such adapter folder {spec.init_adapter}")
        resolved["init_adapter"] = str(base / spec.init_adapter)
    return spec.model_copy(update=resolved)


def json_schema() -> dict[str, Any]:
    schema = TrainingSpec.model_json_schema()
    schema["$id"] = "https://tuneplane.dev/schemas/training-spec-v1.json"
    schema["title"] = "tuneplane training spec, version 1"
    return schema


def render_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
