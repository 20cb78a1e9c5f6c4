"""End-to-end figures for the local deployment.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/e2e_local.py [--base-model SmolLM2-135M-Instruct]
        [--adapter PATH ...] [--max-tokens 128] [--repeats 5] [--e2e-model NAME] [--json results.json]

Sections (each a function returning a dict of figures, printed and optionally written as JSON):
- ``measure_generation_speed``: tokens/s of plain transformers+peft ``generate`` against the
  scoring core in process and the local inference server over HTTP (openai client), on the same
  base model and adapter with greedy decoding, so all three produce the same tokens.
- ``measure_adapter_load_and_switch``: adapter load time, switch time between two loaded
  adapters, and the cost of a switch that must reload an evicted adapter.
- ``measure_create_to_first_token``: seconds from ``fine_tuning.jobs.create`` to the first streamed
  chat token of the fine-tuned model, through a real control plane, trainer and local deployment
  (tiny model by default; ``--e2e-model ''`` skips it).
Without ``--adapter``, random LoRA adapters (r=8 on the attention projections) are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]


def make_random_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    return out_dir


def measure_generation_speed(base_dir: Path, adapter: Path, *, max_tokens: int, repeats: int) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneplane_training.serving.core import ScoringCore

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32),
                                      str(adapter)).eval()
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")

    def run_plain() -> tuple[float, int]:
        started = time.perf_counter()
        out = plain.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return time.perf_counter() - started, out.shape[1] - inputs["input_ids"].shape[1]

    core = ScoringCore(str(base_dir), dtype="float32")
    core.register_adapter("bench", str(adapter))
    body = {"model": "bench", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}

    def run_core() -> tuple[float, int]:
        started = time.perf_counter()
        answer = core.chat(body)
        return time.perf_counter() - started, answer["usage"]["completion_tokens"]

    with local_server(base_dir, {"bench": adapter}) as (client, _):
        def run_http() -> tuple[float, int]:
            started = time.perf_counter()
            answer = client.chat.completions.create(**body)
            return time.perf_counter() - started, answer.usage.completion_tokens

        def run_http_stream() -> tuple[float, int]:
            started, first, tokens = time.perf_counter(), None, 0
            stream = client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            run_http_stream.first_token_s.append(first)
            return time.perf_counter() - started, tokens

        run_http_stream.first_token_s = []
        runs = {"plain_generate": run_plain, "in_process": run_core, "http": run_http, "http_stream": run_http_stream}
        for run in runs.values():  # warm-up: first calls pay one-off allocation costs
            run()
        samples: dict[str, list[float]] = {name: [] for name in runs}
        tokens: dict[str, int] = {}
        for _ in range(repeats):  # interleaved, so background load hits every variant alike
            for name, run in runs.items():
                seconds, count = run()
                samples[name].append(count / seconds)
                tokens[name] = count
    # Best of N is the figure least disturbed by other work on a shared machine (as timeit does);
    # the median is kept beside it.
    speed = {name: max(values) for name, values in samples.items()}
    return {
        "completion_tokens": tokens,
        "tokens_per_s_best": {name: round(value, 1) for name, value in speed.items()},
        "tokens_per_s_median": {name: round(statistics.median(values), 1) for name, values in samples.items()},
        "ratio_vs_plain": {name: round(value / speed["plain_generate"], 3) for name, value in speed.items()
                           if name != "plain_generate"},
        "http_stream_first_token_s": round(statistics.median(run_http_stream.first_token_s), 4),
    }


def measure_adapter_load_and_switch(base_dir: Path, adapters: list[Path], *, repeats: int) -> dict[str, Any]:
    from tuneplane_training.serving.core import ScoringCore

    one_token = {"messages": PROMPT, "max_tokens": 1, "temperature": 0}
    core = ScoringCore(str(base_dir), dtype="float32")
    loads = []
    for index, path in enumerate(adapters[:2]):
        started = time.perf_counter()
        core.register_adapter(f"adapter-{index}", str(path))
        loads.append(time.perf_counter() - started)

    def latency(model: str) -> float:
        started = time.perf_counter()
        core.chat({**one_token, "model": model})
        return time.perf_counter() - started

    latency("adapter-0")
    same = [latency("adapter-0") for _ in range(repeats * 4)]
    switching = [latency(f"adapter-{i % 2}") for i in range(1, repeats * 4 + 1)]
    # With room for one adapter, every switch evicts the other and loads it again from disk.
    cold = ScoringCore(str(base_dir), dtype="float32", max_loaded_adapters=1)
    for index, path in enumerate(adapters[:2]):
        cold.register_adapter(f"adapter-{index}", str(path))
    reloads = []
    for i in range(repeats * 2):
        started = time.perf_counter()
        cold.chat({**one_token, "model": f"adapter-{i % 2}"})
        reloads.append(time.perf_counter() - started)
    same_median = statistics.median(same)
    return {
        "register_and_load_s": [round(s, 4) for s in loads],
        "one_token_request_same_adapter_s": round(same_median, 4),
        "switch_between_loaded_adapters_s": round(max(0.0, statistics.median(switching) - same_median), 4),
        "switch_with_reload_from_disk_s": round(max(0.0, statistics.median(reloads) - same_median), 4),
    }


def measure_create_to_first_token(base_model: str = "tiny-random-llama", *, n_epochs: int = 1) -> dict[str, Any]:
    """Seconds from ``fine_tuning.jobs.create`` to the first streamed chat token of the fine-tuned model,
    through a real control plane (uvicorn), the real trainer and the local deployment, with the
    official openai client. The clock starts when the create call is sent (the file is uploaded before)."""
    import httpx
    import openai

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-e2e-") as home, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        key = "tp-bench-key"
        env = os.environ | {"TUNEPLANE_HOME": home, "TUNEPLANE_API_KEY": key, "TUNEPLANE_SERVING_DEVICE": "cpu"}
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory",
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the control plane did not start")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=600, max_retries=0)
            lines = [json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                              {"role": "assistant", "content": f"Answer {i}."}]}) for i in range(12)]
            upload = client.files.create(file=("bench.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
            marks: dict[str, float] = {}
            started = time.perf_counter()
            job = client.fine_tuning.jobs.create(
                model=base_model, training_file=upload.id, seed=1,
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs, "batch_size": 4}}},
            )
            while True:
                job = client.fine_tuning.jobs.retrieve(job.id)
                if job.status == "running":
                    marks.setdefault("running", time.perf_counter() - started)
                if job.status in ("failed", "cancelled"):
                    raise RuntimeError(f"the benchmark job ended {job.status}: {job.error}")
                if job.status == "succeeded" and ((job.model_extra or {}).get("deployment") or {}).get("status") == "succeeded":
                    break
                time.sleep(0.1)
            marks["succeeded_and_deployed"] = time.perf_counter() - started
            stream = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": "Question 3?"}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    marks["first_chat_token"] = time.perf_counter() - started
                    break
            stream.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return {"base_model": base_model, "n_epochs": n_epochs, "examples": 12,
            **{f"create_to_{name}_s": round(value, 2) for name, value in marks.items()}}


class local_server:
    """The inference server as a real process (``python -m tuneplane_training.serving``)."""

    def __init__(self, base_dir: Path, adapters: dict[str, Path]) -> None:
        self.base_dir, self.adapters = base_dir, adapters

    def __enter__(self):
        import httpx
        import openai

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "tuneplane_training.serving", "--base-model", str(self.base_dir),
                   "--port", str(port), "--dtype", "float32"]
        for name, path in self.adapters.items():
            command += ["--adapter", f"{name}={path}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"inference server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("inference server did not become healthy in 300 s") from None
            time.sleep(0.3)
        return openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=600, max_retries=0), url

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct", help="catalog name or model folder")
    parser.add_argument("--adapter", type=Path, action="append", default=[], help="LoRA folder (give two for switching)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--e2e-model", default="tiny-random-llama",
                        help="base model of the create-to-first-token run ('' skips it)")
    args = parser.parse_args(argv)

    from transformers.utils import logging as transformers_logging

    from tuneplane_training.catalog import resolve_base_model

    transformers_logging.disable_progress_bar()
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so server processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base_dir = resolve_base_model(args.base_model)
    results: dict[str, Any] = {
        "base_model": args.base_model,
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
    }
    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-") as scratch:
        adapters = list(args.adapter)
        while len(adapters) < 2:
            adapters.append(make_random_adapter(base_dir, Path(scratch) / f"adapter-{len(adapters)}", len(adapters)))
        sections = {
            "generation": lambda: measure_generation_speed(base_dir, adapters[0], max_tokens=args.max_tokens,
                                                           repeats=args.repeats),
            "adapters": lambda: measure_adapter_load_and_switch(base_dir, adapters, repeats=args.repeats),
        }
        if args.e2e_model:
            sections["create_to_first_token"] = lambda: measure_create_to_first_token(args.e2e_model)
        for name, measure in sections.items():
            results[name] = measure()  # printed at once, so a run cut short still reports what it measured
            print(json.dumps({name: results[name]}, indent=2), flush=True)
    ratios = results["generation"]["ratio_vs_plain"]
    print(f"tokens/s vs plain transformers generate: in-process {ratios['in_process']:.2f}x, "
          f"HTTP {ratios['http']:.2f}x, HTTP streaming {ratios['http_stream']:.2f}x (target >= 1.0x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
