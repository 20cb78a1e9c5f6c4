"""The spec contract: defaults, field-naming errors, path resolution, and the published JSON Schema."""

import json

import pytest

from tuneplane_training.spec import SCHEMA_PATH, SpecError, load_spec, parse_spec, render_schema

MINIMAL = {"job_id": "ftjob-1", "base_model": "tiny-random-llama", "training_file": "train.jsonl"}


def test_defaults_are_documented_values():
    spec = parse_spec(MINIMAL)
    assert spec.spec_version == 1 and spec.method.type == "supervised" and spec.method.dpo.beta == 0.1
    assert spec.peft.type == "lora" and spec.peft.target_modules == "all-linear"
    assert spec.distribution.type == "none" and spec.world_size == 1
    assert spec.checkpoint.every_n_steps is None and spec.resume == "auto"
    assert spec.truncation == "truncate" and spec.packing is False
    assert parse_spec({**MINIMAL, "method": "dpo"}).method.type == "dpo"


@pytest.mark.parametrize("change, message", [
    ({"job_id": ""}, "spec field job_id:"),
    ({"peft": {"r": 0}}, "spec field peft.r:"),
    ({"peft": {"target_modules": []}}, "spec field peft.target_modules:"),
    ({"hyperparameters": {"batch_size": "big"}}, "spec field hyperparameters.batch_size:"),
    ({"hyperparameters": {"learning_rate": float("inf")}}, "spec field hyperparameters.learning_rate:"),
    ({"distribution": {"num_processes": 0}}, "spec field distribution.num_processes:"),
    ({"checkpoint": {"every_n_steps": 0}}, "spec field checkpoint.every_n_steps:"),
    ({"truncation": "cut"}, "spec field truncation:"),
    ({"method": {"type": "dpo"}, "packing": True}, "packing: not supported with method dpo"),
    ({"method": {"type": "dpo"}, "peft": {"type": "full"}}, "peft.type: dpo needs an adapter"),
    ({"surprise": 1}, "spec field surprise: Extra inputs are not permitted"),
])
def test_invalid_specs_name_the_field(change, message):
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, **change})
    assert message in str(caught.value)


def test_load_spec_resolves_paths_relative_to_the_spec(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**MINIMAL, "training_file": "data/train.jsonl"}))
    assert load_spec(path).training_file == str(tmp_path / "data" / "train.jsonl")
    path.write_text(json.dumps({**MINIMAL, "training_file": "data/train.jsonl", "validation_file": "nope.jsonl"}))
    with pytest.raises(SpecError, match="spec field validation_file: no such file"):
        load_spec(path)
    path.write_text(json.dumps({**MINIMAL, "training_file": "data/train.jsonl", "resume": "ckpt"}))
    with pytest.raises(SpecError, match="spec field resume"):
        load_spec(path)
    path.write_text("{\"job_id\": ")
    with pytest.raises(SpecError, match="not valid JSON at line 1"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.json")


def test_published_schema_is_up_to_date():
    assert SCHEMA_PATH.read_text() == render_schema(), "run: python -m tuneplane_training.spec"
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"job_id", "base_model", "training_file"}
