"""Where a job's starting weights come from: the ``base_model`` and ``init_adapter`` of its trainer spec.

A job's ``model`` is a catalog name, or an ``ft:`` model from the registry:

- a catalog name goes to the trainer as is;
- a fully fine-tuned ``ft:`` model is an ordinary Hugging Face folder: it becomes ``base_model``;
- an adapter ``ft:`` model (lora, qlora, dora) is continued: ``base_model`` is the base its own job
  trained on (followed up the lineage, so a continued adapter of a continued adapter still lands on
  the catalog model, or on the fully fine-tuned folder under them), and ``init_adapter`` is where
  the adapter lies: the local registry's folder, or the registered source (the parent job's output,
  an ``azureml://`` URI that the Azure backend mounts).

The child's name stays ``ft:{root base}:…`` (``domain.ids.fine_tuned_model_name``). Pure lookups in
the registry: no torch, no peft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneplane.domain.ids import parse_fine_tuned_model
from tuneplane.ports import ModelRegistry

# Far longer than any real lineage; only a registry whose lineage loops gets there.
MAX_LINEAGE_DEPTH = 100


class ModelSourceError(Exception):
    """The job's model cannot be trained from; ``code``/``param`` go into the job's error."""

    def __init__(self, code: str, message: str, param: str):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class ModelSource:
    base_model: str
    init_adapter: str | None = None


def resolve_model_source(registry: ModelRegistry | None, project: str, model: str, peft_type: str) -> ModelSource:
    """The spec's ``base_model``/``init_adapter`` for a job on ``model`` with ``peft_type``.

    Raises ``ModelSourceError``: ``model_not_found`` (param ``model``) for an ``ft:`` model that is not
    registered in ``project``, ``invalid_peft`` (param ``peft.type``) when ``peft_type`` cannot
    continue the adapter: dora for a DoRA adapter, lora or qlora for a LoRA/QLoRA one (the trainer's
    rule, training/SPEC.md, checked here before any compute is spent)."""
    if parse_fine_tuned_model(model) is None:
        return ModelSource(model)  # a catalog name: the trainer resolves it
    entry = _entry(registry, project, model)
    adapter = adapter_location(entry)
    if adapter is None:
        return ModelSource(_base_of(registry, project, model, 0))
    _check_peft(model, entry, adapter, peft_type)
    return ModelSource(_base_of(registry, project, parent_model(entry, model), 0), adapter)


def adapter_location(entry: dict[str, Any]) -> str | None:
    """Where an adapter model's weights lie, or None for a fully fine-tuned model."""
    path = Path(entry["path"]) if entry.get("path") else None
    if path is not None and path.is_dir():
        return str(path) if (path / "adapter_config.json").exists() else None
    # No local folder (the Azure ML registry): the registration's tags say what the job trained.
    if (entry.get("tags") or {}).get("peft", "full") == "full":
        return None
    return entry.get("source_uri") or None


def parent_model(entry: dict[str, Any], model: str) -> str:
    """The model the entry's job trained on (its ``base_model`` tag is that job's ``model``)."""
    parts = parse_fine_tuned_model(model) or {}
    return str((entry.get("tags") or {}).get("base_model") or entry.get("base_model") or parts.get("base") or model)


def _entry(registry: ModelRegistry | None, project: str, model: str) -> dict[str, Any]:
    entry = registry.get(project, model) if registry is not None else None
    if entry is None:
        raise ModelSourceError("model_not_found", f"The model '{model}' is not in the model registry.", "model")
    return entry


def _base_of(registry: ModelRegistry | None, project: str, model: str, depth: int) -> str:
    if parse_fine_tuned_model(model) is None:
        return model
    if depth > MAX_LINEAGE_DEPTH:
        raise ModelSourceError("model_not_found", f"The lineage of '{model}' does not end in a base model.", "model")
    entry = _entry(registry, project, model)
    if adapter_location(entry) is not None:
        return _base_of(registry, project, parent_model(entry, model), depth + 1)
    path = Path(entry["path"]) if entry.get("path") else None
    if path is None or not (path / "config.json").is_file():
        raise ModelSourceError("model_not_found", f"The model '{model}' is not in the model registry.", "model")
    return str(path)  # a fully fine-tuned model is an ordinary Hugging Face folder


def _check_peft(model: str, entry: dict[str, Any], adapter: str, peft_type: str) -> None:
    config = Path(adapter) / "adapter_config.json"
    if config.is_file():
        is_dora = bool(json.loads(config.read_text(encoding="utf-8")).get("use_dora"))
    else:
        is_dora = (entry.get("tags") or {}).get("peft") == "dora"
    allowed = ("dora",) if is_dora else ("lora", "qlora")
    if peft_type not in allowed:
        kind = "a DoRA" if is_dora else "a LoRA"
        raise ModelSourceError("invalid_peft", f"The model '{model}' is {kind} adapter: continuing its training needs "
                                               f"peft.type {' or '.join(allowed)}, not {peft_type}.", "peft.type")
