"""The local inference server as the control plane runs it: a real process on a free loopback
port, called over HTTP with the official openai client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serving_models import PROMPT, make_lora_adapter, plain_generate

pytestmark = pytest.mark.slow

A, B = "ft:tiny-random-llama:acme:a:ftjob-a", "ft:tiny-random-llama:acme:b:ftjob-b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    folder = root / "adapters"
    made = {
        A: make_lora_adapter(tiny_model_dir, folder / A, seed=21),
        B: make_lora_adapter(tiny_model_dir, folder / B, seed=22),
        "late": make_lora_adapter(tiny_model_dir, root / "late", seed=23),
    }
    return folder, made


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapters, tmp_path_factory):
    folder, _ = adapters
    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneplane_training.serving", "--base-model", str(tiny_model_dir),
             "--served-name", "tiny-random-llama", "--port", str(port), "--adapters-dir", str(folder),
             "--max-loaded-adapters", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not become healthy:\n{log.read_text()}")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", timeout=120, max_retries=0)


def test_two_adapters_answer_from_one_process_like_plain_peft(client, tiny_model_dir, adapters):
    _, made = adapters
    with ThreadPoolExecutor(4) as pool:  # interleaved requests for both adapters at once
        futures = [pool.submit(client.chat.completions.create, model=m, messages=PROMPT, max_tokens=12, temperature=0)
                   for m in (A, B, A, B)]
        answers = [f.result() for f in futures]
    for model, answer in zip((A, B, A, B), answers):
        text, prompt_tokens, completion_tokens = plain_generate(tiny_model_dir, made[model], 12)
        assert answer.model == model
        assert answer.choices[0].message.content == text
        assert answer.usage.prompt_tokens == prompt_tokens and answer.usage.completion_tokens == completion_tokens
    assert answers[0].choices[0].message.content != answers[1].choices[0].message.content
    models = {m.id for m in client.models.list()}
    assert models == {"tiny-random-llama", A, B}


def test_streaming_over_sse(client, tiny_model_dir, adapters):
    _, made = adapters
    stream = client.chat.completions.create(model=B, messages=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain_generate(tiny_model_dir, made[B], 12)[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_errors_come_in_the_openai_envelope(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="ft:nope", messages=PROMPT)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=A, messages=PROMPT, n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=A, messages=PROMPT, stream=True, max_tokens=0)
    response = httpx.post(f"{server}/v1/chat/completions", content=b"{oops", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_adapters_are_registered_and_removed_at_runtime(client, server, tiny_model_dir, adapters):
    _, made = adapters
    listed = httpx.get(f"{server}/adapters", timeout=30).json()["data"]
    assert {a["name"] for a in listed} == {A, B}
    registered = httpx.post(f"{server}/adapters", json={"name": "late", "path": str(made["late"])}, timeout=120)
    assert registered.status_code == 200 and registered.json()["loaded"] is True
    answer = client.chat.completions.create(model="late", messages=PROMPT, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content == plain_generate(tiny_model_dir, made["late"], 8)[0]
    bad = httpx.post(f"{server}/adapters", json={"name": "bad", "path": str(tiny_model_dir)}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "full_model"
    missing_name = httpx.post(f"{server}/adapters", json={"path": str(made["late"])}, timeout=60)
    assert missing_name.status_code == 400 and missing_name.json()["error"]["param"] == "name"
    assert httpx.delete(f"{server}/adapters/late", timeout=60).json() == {"name": "late", "deleted": True}
    assert httpx.delete(f"{server}/adapters/late", timeout=60).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="late", messages=PROMPT, max_tokens=8)
