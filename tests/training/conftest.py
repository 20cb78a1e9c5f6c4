"""Shared fixtures for trainer tests (also used by the distributed and serving tests).

Stable interface:
- ``tiny_model_dir``: a local HF folder with a tiny random Llama (fp32) and the real SmolLM2
  tokenizer and chat template (built once from the GGUF, then cached).
- ``tiny_tokenizer``: that tokenizer.
- ``chat_rows(n)`` / ``dpo_rows(n)``: deterministic, learnable OpenAI-format rows.
- ``write_jsonl(path, rows)``.
- ``make_spec(tmp_path, **fields)``: writes training data + a spec JSON, returns the spec path.
  Nested fields are merged, e.g. ``make_spec(tmp_path, peft={"type": "dora"})``.
- ``run_trainer(spec_path, output_dir, timeout=..., env=None)``: runs ``tuneplane-train`` as a real
  subprocess and returns the CompletedProcess (stdout/stderr captured as text).
- ``read_events(output_dir)``: the parsed events.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TRAIN_BIN = Path(sys.executable).with_name("tuneplane-train")
_CITIES = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Chile", "Santiago"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Canada", "Ottawa"),
]


def chat_rows(n: int = 12) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        country, city = _CITIES[i % len(_CITIES)]
        messages = [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {city}."},
        ]
        if i % 3 == 1:  # multi-turn, with an assistant turn that carries no loss
            messages[2]["weight"] = 0
            messages += [
                {"role": "user", "content": "Say it again."},
                {"role": "assistant", "content": f"{city} is the capital of {country}."},
            ]
        rows.append({"messages": messages})
    return rows


def dpo_rows(n: int = 8) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        country, city = _CITIES[i % len(_CITIES)]
        rows.append({
            "input": {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"The capital is {city}."}],
            "non_preferred_output": [{"role": "assistant", "content": "I do not know, sorry."}],
        })
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from tuneplane_training.catalog import resolve_base_model

    return resolve_base_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def make_spec(tiny_model_dir):
    def build(tmp_path: Path, *, rows: list[dict[str, Any]] | None = None, validation_rows=None, **fields: Any) -> Path:
        dpo = fields.get("method") in ("dpo", {"type": "dpo"}) or (
            isinstance(fields.get("method"), dict) and fields["method"].get("type") == "dpo")
        train = write_jsonl(tmp_path / "train.jsonl", rows if rows is not None else (dpo_rows() if dpo else chat_rows()))
        spec: dict[str, Any] = {
            "spec_version": 1,
            "job_id": "ftjob-test",
            "base_model": str(tiny_model_dir),
            "training_file": str(train),
            "seed": 7,
            "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
            "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "max_seq_length": 256},
        }
        if validation_rows is not None:
            spec["validation_file"] = str(write_jsonl(tmp_path / "valid.jsonl", validation_rows))
        spec = _merge(spec, fields)
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return path

    return build


def run_trainer(spec_path: Path, output_dir: Path, timeout: float = 300, env: dict[str, str] | None = None,
                extra_args: list[str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    return subprocess.run(
        [str(TRAIN_BIN), "--spec", str(spec_path), "--output-dir", str(output_dir), *(extra_args or [])],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def read_events(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
