"""Where a job's starting weights come from (``tuneplane.model_source``): catalog names, fully
fine-tuned models, adapters continued as ``init_adapter`` (followed up their lineage), with the real
local registry and the Azure ML registry adapter (only its MLClient mocked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.functions.backends.azure_ml_fakes import mocked_ml_client, no_sleep_retry, not_found, settings
from tuneplane.backends.azure_ml_deploy import AzureModelRegistry, model_asset_name
from tuneplane.backends.local_registry import LocalModelRegistry
from tuneplane.domain.ids import fine_tuned_model_name
from tuneplane.model_source import ModelSource, ModelSourceError, resolve_model_source


def _folder(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


def _adapter(root: Path, name: str, *, dora: bool = False) -> Path:
    return _folder(root, name, {"adapter_config.json": json.dumps({"peft_type": "LORA", "use_dora": dora}),
                                "adapter_model.safetensors": "w"})


def _register(registry, name: str, folder: Path | str, *, parent: str, peft: str) -> dict:
    root = name.split(":")[1]
    return registry.register(project="p", name=name, source_uri=str(folder), base_model=root,
                             tags={"job_id": name.rsplit(":", 1)[1], "base_model": parent, "peft": peft})


def test_a_catalog_model_goes_as_is_without_a_registry():
    assert resolve_model_source(None, "p", "tiny-random-llama", "lora") == ModelSource("tiny-random-llama")


def test_adapters_continue_down_their_lineage_to_the_full_model_under_them(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    full = "ft:tiny-random-llama:p::ftjob-full"
    _register(registry, full, _folder(tmp_path, "full", {"config.json": "{}", "model.safetensors": "w"}),
              parent="tiny-random-llama", peft="full")
    first = "ft:tiny-random-llama:p::ftjob-a1"
    _register(registry, first, _adapter(tmp_path, "a1", dora=True), parent=full, peft="dora")
    second = fine_tuned_model_name(first, "p", None, "ftjob-a2")
    assert second == "ft:tiny-random-llama:p::ftjob-a2"  # the root base, however deep the lineage
    entry = _register(registry, second, _adapter(tmp_path, "a2", dora=True), parent=first, peft="dora")

    full_path = registry.get("p", full)["path"]
    assert resolve_model_source(registry, "p", full, "full") == ModelSource(full_path)
    assert resolve_model_source(registry, "p", first, "dora") == ModelSource(full_path, registry.get("p", first)["path"])
    assert resolve_model_source(registry, "p", second, "dora") == ModelSource(full_path, entry["path"])
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source(registry, "p", second, "qlora")
    assert (err.value.code, err.value.param) == ("invalid_peft", "peft.type")
    assert "is a DoRA adapter: continuing its training needs peft.type dora, not qlora" in err.value.message


def test_a_missing_link_in_the_lineage_is_model_not_found(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    child = "ft:tiny-random-llama:p::ftjob-c"
    _register(registry, child, _adapter(tmp_path, "c"), parent="ft:tiny-random-llama:p::ftjob-gone", peft="lora")
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source(registry, "p", child, "lora")
    assert (err.value.code, err.value.param) == ("model_not_found", "model")
    assert "ft:tiny-random-llama:p::ftjob-gone" in err.value.message
    with pytest.raises(ModelSourceError, match="not in the model registry"):
        resolve_model_source(registry, "other-project", child, "lora")


def test_an_azure_registered_adapter_continues_from_its_job_output():
    ml = mocked_ml_client()
    registry = AzureModelRegistry(ml, settings("UseDevelopmentStorage=true", "files"), retry=no_sleep_retry())
    registered = {}
    ml.models.create_or_update.side_effect = lambda model: registered.setdefault(model.name, model)

    def get(name, version):
        if name not in registered:
            raise not_found()
        return registered[name]

    ml.models.get.side_effect = get
    name = "ft:SmolLM2-135M-Instruct:p::ftjob-parent"
    output = "azureml://jobs/ftjob-parent/outputs/model"
    _register(registry, name, output, parent="SmolLM2-135M-Instruct", peft="qlora")
    assert model_asset_name(name) in registered
    assert resolve_model_source(registry, "p", name, "lora") == ModelSource("SmolLM2-135M-Instruct", output)
    with pytest.raises(ModelSourceError, match="is a LoRA adapter: continuing its training needs peft.type lora or qlora, not full"):
        resolve_model_source(registry, "p", name, "full")
