"""The Azure ML entry script: init() reads the deployment's model folder, run() answers with the
same scoring core the local server uses."""

from __future__ import annotations

import json
import shutil

import pytest
from serving_models import PROMPT, make_lora_adapter, plain_generate
from tuneplane_training.serving import score

NAME = "ft:tiny-random-llama:acme:support:ftjob-123"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    # Azure ML mounts a registered model as AZUREML_MODEL_DIR/<folder>; the extra adapter sits beside it.
    root = tmp_path_factory.mktemp("azureml-model")
    adapter = make_lora_adapter(tiny_model_dir, root / "support-model", seed=5)
    make_lora_adapter(tiny_model_dir, adapter / "extra", seed=6)
    return root


@pytest.fixture
def deployment(model_dir, tiny_model_dir, monkeypatch):
    # Recorded first, so the module globals init() sets are reset to None after each test.
    monkeypatch.setattr(score, "_core", None)
    monkeypatch.setattr(score, "_model_name", None)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("TUNEPLANE_MODEL_NAME", NAME)
    monkeypatch.setenv("TUNEPLANE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNEPLANE_ADAPTERS", json.dumps({"extra-model": "extra"}))
    score.init()
    return model_dir / "support-model"


def test_init_and_run_answer_like_plain_peft(deployment, tiny_model_dir):
    body = {"messages": PROMPT, "max_tokens": 12, "temperature": 0}
    answer = score.run(json.dumps(body))
    text, prompt_tokens, completion_tokens = plain_generate(tiny_model_dir, deployment, 12)
    assert answer["model"] == NAME  # "model" may be left out: the deployment's own model answers
    assert answer["choices"][0]["message"]["content"] == text
    assert answer["usage"]["completion_tokens"] == completion_tokens
    assert answer["usage"]["prompt_tokens"] == prompt_tokens
    extra = score.run(json.dumps({**body, "model": "extra-model"}).encode())
    assert extra["choices"][0]["message"]["content"] == plain_generate(tiny_model_dir, deployment / "extra", 12)[0]


def test_run_reports_bad_requests_in_the_error_envelope(deployment):
    status, body = score.handle("{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = score.handle({"model": "ft:unknown", "messages": PROMPT})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = score.handle({"messages": PROMPT, "stream": True})
    assert status == 400 and body["error"]["param"] == "stream"
    status, body = score.handle({"messages": PROMPT, "n": 3})
    assert status == 400 and body["error"]["param"] == "n"
    assert score.run({"messages": PROMPT, "n": 3})["error"]["param"] == "n"


def test_a_full_model_folder_is_served_as_its_own_base(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "full-model")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("TUNEPLANE_MODEL_NAME", raising=False)
    monkeypatch.delenv("TUNEPLANE_ADAPTERS", raising=False)
    core, name = score.load_deployment(dict(AZUREML_MODEL_DIR=str(tmp_path)))
    assert name == "full-model"
    answer = core.chat({"messages": PROMPT, "max_tokens": 8, "temperature": 0}, default_model=name)
    assert answer["choices"][0]["message"]["content"] == plain_generate(tiny_model_dir, None, 8)[0]


def test_init_fails_clearly_without_a_model(tmp_path):
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR"):
        score.load_deployment({})
    with pytest.raises(RuntimeError, match="found nothing"):
        score.load_deployment({"AZUREML_MODEL_DIR": str(tmp_path)})
    status, body = score.handle({"messages": PROMPT})
    assert status == 503
