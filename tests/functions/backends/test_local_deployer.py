"""The local deployer against real inference processes on the tiny model: an adapter deployed on
the base process, state re-adopted by a new deployer (a restarted control plane), a dead process
restarted with its adapters, and every process stopped on close."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tuneplane.backends.local_deployer import LocalDeployer
from tuneplane.ports import PermanentBackendError

pytestmark = pytest.mark.slow
BASE = "tiny-random-llama"
MODEL = "ft:tiny-random-llama:acme:unit:ftjob-000000000000000000000001"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A random LoRA adapter for the tiny Llama in PEFT's on-disk layout, written with numpy so this
    test process never loads torch (the inference process does)."""
    import numpy as np
    from safetensors.numpy import save_file

    out = tmp_path_factory.mktemp("adapter")
    rng = np.random.default_rng(0)
    hidden, kv_width, r = 64, 32, 4  # tiny-random-llama: 64 wide, 2 of 4 heads carry keys/values
    tensors = {}
    for layer in range(2):
        for module, width in (("q_proj", hidden), ("v_proj", kv_width)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.5, (r, hidden)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.5, (width, r)).astype(np.float32)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "inference_mode": True,
    }))
    return out


def chat(url: str, model: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet is a zombie: dead for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_deploy_adopt_restart_and_close(tmp_path, adapter_dir):
    root = tmp_path / "deployments"
    first = LocalDeployer(root, device="cpu")
    deployment = first.deploy(project="acme", model=MODEL, base_model=BASE, source_uri=str(adapter_dir))
    assert deployment["status"] == "succeeded" and deployment["kind"] == "adapter"
    url = first.endpoint_for("acme", MODEL)
    assert url == deployment["endpoint"]
    assert chat(url, MODEL)["model"] == MODEL
    assert first.endpoint_for("other", MODEL) is None  # project-scoped
    assert first.deploy(project="acme", model=MODEL, base_model=BASE, source_uri=str(adapter_dir))["endpoint"] == url
    [pid] = [s["pid"] for s in json.loads((root / "deployments.json").read_text())["servers"].values()]

    # A restarted control plane (a new deployer on the same folder) adopts the running process.
    second = LocalDeployer(root, device="cpu")
    second.recover()
    assert second.endpoint_for("acme", MODEL) == url
    assert json.loads((root / "deployments.json").read_text())["servers"][f"base:{BASE}"]["pid"] == pid

    # The process dies: the next use starts a new one and registers the adapter with it again.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.revive("acme", MODEL) != url
    new_url = second.endpoint_for("acme", MODEL)
    assert chat(new_url, MODEL)["choices"][0]["finish_reason"] == "length"
    new_pid = json.loads((root / "deployments.json").read_text())["servers"][f"base:{BASE}"]["pid"]

    assert second.undeploy("acme", MODEL) is True and second.undeploy("acme", MODEL) is False
    assert httpx.get(f"{new_url}/adapters").json()["data"] == []
    second.close()
    first.close()
    assert not alive(new_pid)


def test_a_folder_without_a_model_is_refused_and_recorded_as_failed(tmp_path):
    deployer = LocalDeployer(tmp_path / "deployments")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PermanentBackendError) as caught:
        deployer.deploy(project="acme", model=MODEL, base_model=BASE, source_uri=str(empty))
    assert caught.value.code == "deployment_source_invalid"
    with pytest.raises(PermanentBackendError):
        deployer.deploy(project="acme", model=MODEL, base_model=BASE, source_uri=str(tmp_path / "missing"))
    assert deployer.status("acme", MODEL) is None
    deployer.close()
