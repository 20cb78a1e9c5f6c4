"""The local model catalog: tiny model build, name resolution errors, and the concurrency-safe cache."""

import multiprocessing
import os
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneplane_training import catalog


def test_tiny_random_llama_is_deterministic_with_the_real_chat_template(tiny_model_dir, tiny_tokenizer):
    assert (tiny_model_dir / ".complete").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert model.config.hidden_size == 64 and model.config.vocab_size == len(tiny_tokenizer) == 49152
    torch.manual_seed(1234)
    rebuilt = type(model)(catalog.tiny_llama_config(len(tiny_tokenizer)))
    assert torch.equal(rebuilt.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight)
    rendered = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_resolution_errors_name_the_field(tmp_path, monkeypatch):
    with pytest.raises(catalog.UnknownModelError, match="base_model: 'no-such-model' is not a catalog name"):
        catalog.resolve_base_model("no-such-model")
    with pytest.raises(catalog.UnknownModelError, match="has no config.json"):
        catalog.resolve_base_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(catalog.UnknownModelError, match="cannot fetch Hugging Face model"):
        catalog.resolve_base_model("nobody/not-cached-model")


def test_local_folder_resolves_to_itself(tiny_model_dir):
    assert catalog.resolve_base_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def _build_slowly(target):
    # Runs in each racing process: counts builds in a shared file, so the test sees duplicates.
    with open(os.environ["BUILD_LOG"], "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (target / "config.json").write_text("{}")


def _race(result_queue):
    result_queue.put(str(catalog._cached("race-model", _build_slowly)))


def test_concurrent_builds_happen_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLANE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "builds.log"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_race, args=(queue,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    paths = {queue.get(timeout=10) for _ in workers}
    assert len(paths) == 1
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1
    folder = tmp_path / "cache" / f"race-model-v{catalog._BUILD_VERSION}"
    assert (folder / "config.json").is_file() and (folder / ".complete").is_file()
    # No temporary build folders are left behind.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".race-model.lock", folder.name]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLANE_MODEL_CACHE", str(tmp_path / "cache"))

    def broken(target):
        (target / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        catalog._cached("broken", broken)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".broken.lock"]
