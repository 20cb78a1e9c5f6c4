"""Models for the serving tests: random LoRA adapters on the tiny Llama, and the answers plain
peft + transformers give for them (what the served answers must equal)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import torch

PROMPT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of Peru?"}]


def make_lora_adapter(base_dir: Path, out_dir: Path, seed: int, *, model=None) -> Path:
    """A random (init_lora_weights=False) LoRA adapter saved as the trainer saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = model or AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (base_dir / name).is_file():  # the trainer saves the base's tokenizer beside the adapter
            shutil.copy(base_dir / name, out_dir / name)
    return out_dir


@functools.lru_cache(maxsize=4)
def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def plain_generate(base_dir: Path, adapter_dir: Path | None, max_new_tokens: int, messages=PROMPT) -> tuple[str, int, int]:
    """(text, prompt_tokens, completion_tokens) from plain transformers/peft greedy generate."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_of(Path(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), inputs["input_ids"].shape[1], new.numel()
