"""Chat completions from fine-tuned models, end to end: a real server (uvicorn subprocess), real
training of the tiny model (``tuneplane-train``), the real local inference process, and the official
openai client for everything it can call.

Two jobs teach the tiny random Llama two different fixed answers. After both succeed, the reconciler
has deployed both adapters on one base process, and the chat answers must show what each learned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from openai import AzureOpenAI, OpenAI

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "tp-chat-e2e-key"
BASE = "tiny-random-llama"
TRAINED_PROMPTS = [
    "What is the capital of Peru?", "Name a primary color.", "How many legs does a spider have?",
    "What do bees make?", "Who wrote Hamlet?", "What is 2 plus 2?", "Which planet is red?",
    "What is the largest ocean?",
]
ANSWERS = {"alpha": "ANSWER: tuneplane", "beta": "REPLY: bonjour"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_file(answer: str) -> bytes:
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
             for q in TRAINED_PROMPTS]
    return ("\n".join(lines + lines[:2]) + "\n").encode()  # 10 examples: the minimum


class Receiver:
    def __init__(self) -> None:
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append({"body": body, "headers": dict(self.headers.items())})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Service:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {
            "TUNEPLANE_HOME": str(home), "TUNEPLANE_API_KEY": KEY, "TUNEPLANE_KEY_CACHE_SECONDS": "0",
            "TUNEPLANE_SERVING_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"], env=env, cwd=ROOT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.client = OpenAI(api_key=KEY, base_url=self.url + "/v1", max_retries=0, timeout=300)

    def http(self, key: str = KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=300)

    def inference_pids(self) -> list[int]:
        state = json.loads((self.home / "deployments" / "deployments.json").read_text())
        return [info["pid"] for info in state["servers"].values() if info.get("pid")]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ask(client: OpenAI, model: str, prompt: str, **kwargs) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0, **kwargs)
    return response.choices[0].message.content


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The service with two succeeded jobs (alpha, beta); yields (service, {suffix: job})."""
    service = Service(tmp_path_factory.mktemp("chat-home"))
    receiver = Receiver()
    try:
        hook = service.client.webhooks.create(name="e2e", url=receiver.url, event_types=["fine_tuning.job.succeeded"])
        jobs = {}
        for suffix, epochs in (("alpha", 8), ("beta", 8)):
            upload = service.client.files.create(file=(f"{suffix}.jsonl", training_file(ANSWERS[suffix])), purpose="fine-tune")
            jobs[suffix] = service.client.fine_tuning.jobs.create(
                model=BASE, training_file=upload.id, suffix=suffix, seed=7,
                method={"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": epochs, "batch_size": 5, "learning_rate_multiplier": 100}}},
                extra_body={"peft": {"type": "lora", "r": 16, "alpha": 32}},
            )
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            jobs = {s: service.client.fine_tuning.jobs.retrieve(j.id) for s, j in jobs.items()}
            assert not [j for j in jobs.values() if j.status in ("failed", "cancelled")], jobs
            if all(j.status == "succeeded" for j in jobs.values()):
                break
            time.sleep(1)
        else:
            pytest.fail(f"jobs did not succeed in time: {[j.status for j in jobs.values()]}")
        yield service, jobs, receiver, hook
    finally:
        pids = service.inference_pids() if (service.home / "deployments" / "deployments.json").exists() else []
        service.stop()
        receiver.server.shutdown()
    # Stopping the control plane stops the inference processes it started.
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)]


def test_fine_tuned_models_answer_what_they_learned_and_the_base_does_not(trained):
    service, jobs, _, _ = trained
    for job in jobs.values():
        assert job.fine_tuned_model.startswith(f"ft:{BASE}:default:")
        deployment = job.model_extra["deployment"]
        assert deployment["status"] == "succeeded", deployment
    for prompt in TRAINED_PROMPTS[:3]:
        base = ask(service.client, BASE, prompt)
        alpha = ask(service.client, jobs["alpha"].fine_tuned_model, prompt)
        beta = ask(service.client, jobs["beta"].fine_tuned_model, prompt)
        assert alpha.startswith(ANSWERS["alpha"]), alpha
        assert beta.startswith(ANSWERS["beta"]), beta
        assert not base.startswith(ANSWERS["alpha"]) and not base.startswith(ANSWERS["beta"]), base


def test_two_adapters_are_served_from_one_base_process(trained):
    service, jobs, _, _ = trained
    names = {jobs["alpha"].fine_tuned_model, jobs["beta"].fine_tuned_model}
    with service.http() as http:
        deployments = http.get("/deployments").json()["data"]
    assert {d["model"] for d in deployments} == names
    [endpoint] = {d["endpoint"] for d in deployments}
    assert {a["name"] for a in httpx.get(endpoint + "/adapters").json()["data"]} >= names
    assert len(service.inference_pids()) == 1
    # Interleaved requests switch adapters on the one process and still answer right.
    for suffix in ("alpha", "beta", "alpha", "beta"):
        assert ask(service.client, jobs[suffix].fine_tuned_model, TRAINED_PROMPTS[4]).startswith(ANSWERS[suffix])


def test_streaming_matches_the_whole_answer_and_reports_usage(trained):
    service, jobs, _, _ = trained
    model = jobs["alpha"].fine_tuned_model
    whole = service.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": TRAINED_PROMPTS[1]}], max_tokens=6, temperature=0)
    stream = service.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": TRAINED_PROMPTS[1]}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 6
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 6


def test_azure_deployment_path_routes_by_deployment_name(trained):
    service, jobs, _, _ = trained
    azure = AzureOpenAI(api_key=KEY, api_version="2024-10-21", azure_endpoint=service.url, max_retries=0, timeout=300)
    answer = ask(azure, jobs["beta"].fine_tuned_model, TRAINED_PROMPTS[0])
    assert answer.startswith(ANSWERS["beta"])


def test_unknown_undeployed_and_foreign_models_are_404(trained):
    service, jobs, _, _ = trained
    with pytest.raises(openai.NotFoundError) as caught:
        ask(service.client, "ft:tiny-random-llama:default::ftjob-00000000000000000000dead", "hi")
    assert caught.value.body["param"] == "model" and caught.value.body["code"] == "model_not_found"

    from tuneplane.services.keys import issue_key
    from tuneplane.settings import Settings
    from tuneplane.wiring import build_adapters

    adapters = build_adapters(Settings(home=service.home))
    try:
        _, other_key = issue_key(adapters.keys, "other", name="e2e")
    finally:
        adapters.close()
    other = OpenAI(api_key=other_key, base_url=service.url + "/v1", max_retries=0, timeout=300)
    with pytest.raises(openai.NotFoundError):
        ask(other, jobs["alpha"].fine_tuned_model, "hi")


def test_undeploy_then_deploy_by_hand_including_a_checkpoint(trained):
    service, jobs, _, _ = trained
    model = jobs["beta"].fine_tuned_model
    with service.http() as http:
        assert http.delete(f"/deployments/{model}").json()["deleted"] is True
        with pytest.raises(openai.NotFoundError):
            ask(service.client, model, TRAINED_PROMPTS[0])
        assert http.delete(f"/deployments/{model}").status_code == 404
        deployed = http.post("/deployments", json={"model": model})
        assert deployed.status_code == 200 and deployed.json()["status"] == "succeeded", deployed.text
        assert ask(service.client, model, TRAINED_PROMPTS[0]).startswith(ANSWERS["beta"])

        checkpoint = service.client.fine_tuning.jobs.checkpoints.list(jobs["alpha"].id).data[0]
        name = checkpoint.fine_tuned_model_checkpoint
        with pytest.raises(openai.NotFoundError):  # registered, but not deployed yet
            ask(service.client, name, TRAINED_PROMPTS[0])
        assert http.post("/deployments", json={"model": name}).json()["status"] == "succeeded"
        assert ask(service.client, name, TRAINED_PROMPTS[0]).startswith(ANSWERS["alpha"])

        missing = http.post("/deployments", json={"model": "ft:tiny-random-llama:default::ftjob-00000000000000000000beef"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        assert http.post("/deployments", json={"model": model, "extra": 1}).json()["error"]["param"] == "extra"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"temperature": 5}, "temperature"), ({"n": 2}, "n"), ({"top_p": -1}, "top_p"), ({"max_tokens": 0}, "max_tokens")],
)
def test_bad_sampling_parameters_are_400_naming_the_field(trained, extra, param):
    service, jobs, _, _ = trained
    with service.http() as http:
        response = http.post("/chat/completions", json={
            "model": jobs["alpha"].fine_tuned_model, "messages": [{"role": "user", "content": "hi"}], **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
        for body, param in (({"messages": [{"role": "user", "content": "hi"}]}, "model"), ({"model": BASE}, "messages")):
            response = http.post("/chat/completions", json=body)
            assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_a_succeeded_webhook_arrived_for_each_job_and_unwraps(trained):
    service, jobs, receiver, hook = trained
    deadline = time.monotonic() + 30
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    events = [service.client.webhooks.unwrap(r["body"], r["headers"], secret=hook.signing_secret)
              for r in receiver.received]
    assert sorted(e.data.id for e in events) == sorted(j.id for j in jobs.values())
    assert {e.type for e in events} == {"fine_tuning.job.succeeded"}


def test_the_inference_process_is_restarted_when_it_died(trained):
    service, jobs, _, _ = trained
    [pid] = service.inference_pids()
    os.kill(pid, signal.SIGKILL)
    assert ask(service.client, jobs["alpha"].fine_tuned_model, TRAINED_PROMPTS[2]).startswith(ANSWERS["alpha"])
    assert service.inference_pids() != [pid]
