"""Load the base model and tokenizer and wrap the model for the spec's peft method."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from .spec import TrainingSpec


class ModelSpecError(ValueError):
    """The spec asks for something this model or machine cannot do (exit code 2)."""


def compute_dtype(spec: TrainingSpec) -> torch.dtype:
    if spec.precision == "bf16":
        return torch.bfloat16
    if spec.precision == "fp16":
        if not torch.cuda.is_available():
            raise ModelSpecError("spec field precision: fp16 needs a GPU (use bf16 or fp32 on CPU)")
        return torch.float16
    if spec.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def attention_implementation() -> str:
    # flash-attention varlen keeps packed documents apart on GPU; SDPA gets a block-diagonal mask.
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        # Padding positions carry no loss and are masked, so any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: TrainingSpec, model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(spec)
    # Full fine-tuning keeps fp32 master weights (bf16/fp16 run as autocast); adapters only need the
    # frozen base in the compute dtype, which halves its memory.
    load_dtype = torch.float32 if spec.peft.type == "full" else dtype
    kwargs: dict[str, Any] = {"dtype": load_dtype, "attn_implementation": attention_implementation()}
    if spec.peft.type == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # this rank's GPU
        else:
            kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    # A KV cache during training would also switch off transformers' packed-sequence masking.
    model.config.use_cache = False
    if spec.peft.type == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.peft.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if spec.init_adapter is not None:
        return _continue_adapter(spec, model)
    config = LoraConfig(
        r=spec.peft.r,
        lora_alpha=spec.peft.alpha,
        lora_dropout=spec.peft.dropout,
        target_modules=spec.peft.target_modules,
        use_dora=spec.peft.type == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module that does not exist in this model
        raise ModelSpecError(f"spec field peft.target_modules: {exc}") from exc


def check_init_adapter(spec: TrainingSpec, model_dir: Path) -> dict[str, Any]:
    """Check that ``spec.init_adapter`` can continue on this base with this peft type; return its
    adapter_config. The rule (SPEC.md): a LoRA-family adapter; peft.type dora for a DoRA adapter, lora or
    qlora otherwise (a QLoRA adapter is plain LoRA weights over a quantized base); trained on the same
    base, as named by its adapter_config.json or by the manifest.json our trainer writes beside it."""
    folder = Path(spec.init_adapter or "")
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"spec field init_adapter: {folder} is not a PEFT adapter folder "
                             f"(no readable adapter_config.json)") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ModelSpecError(f"spec field init_adapter: a {config.get('peft_type')} adapter cannot be continued "
                             "(lora, qlora or dora only)")
    is_dora = bool(config.get("use_dora"))
    if is_dora != (spec.peft.type == "dora"):
        kind = "a DoRA" if is_dora else "a LoRA"
        wanted = "dora" if is_dora else "lora or qlora"
        raise ModelSpecError(f"spec field peft.type: init_adapter is {kind} adapter, so peft.type must be "
                             f"{wanted}, not {spec.peft.type}")
    named = {config.get("base_model_name_or_path")}
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        named |= {manifest.get("base_model"), manifest.get("base_model_path")}
    except (OSError, ValueError):
        pass  # an adapter trained elsewhere: its adapter_config alone names the base
    named.discard(None)
    ours = {spec.base_model, str(model_dir)}
    if not any(n in ours or _same_folder(str(n), model_dir) for n in named):
        raise ModelSpecError(f"spec field init_adapter: the adapter was trained on "
                             f"{config.get('base_model_name_or_path')!r}, not on base_model {spec.base_model!r}")
    return config


def _same_folder(name: str, model_dir: Path) -> bool:
    try:
        return Path(name).is_dir() and Path(name).resolve() == Path(model_dir).resolve()
    except OSError:
        return False


def _continue_adapter(spec: TrainingSpec, model: Any) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(spec.init_adapter), is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as exc:  # e.g. shapes or module names that do not fit the base
        raise ModelSpecError(f"spec field init_adapter: cannot load it onto base_model {spec.base_model!r}: {exc}") from exc


def parameter_counts(model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}
