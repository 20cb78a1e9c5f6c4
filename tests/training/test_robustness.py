"""The trainer as a real subprocess: kill -9 and resume, SIGTERM, NaN, out of memory, bad specs."""

import json
import os
import resource
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from conftest import TRAIN_BIN, _merge, chat_rows, read_events, run_trainer, write_jsonl
from tuneplane_training import exitcodes

# 6 examples, batch 2, 2 epochs: 6 optimizer steps; a checkpoint every 2 steps and at each epoch end
# (steps 2, 3, 4, 6), so a kill after step 4 lands mid second epoch.
RUN = dict(hyperparameters={"n_epochs": 2, "batch_size": 2, "learning_rate": 2e-2, "max_seq_length": 128},
           checkpoint={"every_n_steps": 2, "keep_last": 2}, peft={"type": "lora", "dropout": 0.1})
STEPS = 6
# Resumed runs replay the exact data order, dropout masks and optimizer state; on CPU fp32 the only
# differences are summation-order rounding.
TOLERANCE = 1e-4


def _final_losses(output_dir):
    by_step = {}
    for event in read_events(output_dir):
        data = event.get("data") or {}
        if event["type"] == "metrics" and data.get("train_loss") is not None:
            by_step[data["step"]] = data["train_loss"]  # a replayed step: the resumed value wins
    return by_step


def _start(spec, out):
    return subprocess.Popen([str(TRAIN_BIN), "--spec", str(spec), "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def _wait_for_step(process, out, step, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "events.jsonl").is_file() and any(
                e["type"] == "metrics" and e["data"]["step"] >= step for e in read_events(out)):
            return
        if process.poll() is not None:
            pytest.fail(f"trainer exited early with {process.returncode}: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"step {step} not reached in {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("reference")
    spec = _spec(folder, tiny_model_dir)
    result = run_trainer(spec, folder / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


def _spec(folder, model_dir, **overrides):
    spec = _merge({"job_id": "ftjob-r", "base_model": str(model_dir), "seed": 3,
                   "training_file": str(write_jsonl(folder / "train.jsonl", chat_rows(6)))}, RUN)
    spec = _merge(spec, overrides)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _assert_same_run(out, reference):
    ours, theirs = _final_losses(out), _final_losses(reference)
    assert sorted(ours) == list(range(1, STEPS + 1)) == sorted(theirs)
    for step in ours:
        assert abs(ours[step] - theirs[step]) < TOLERANCE, (step, ours[step], theirs[step])
    a, b = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    manifest, expected = json.loads((out / "manifest.json").read_text()), json.loads((reference / "manifest.json").read_text())
    assert manifest["trained_tokens"] == expected["trained_tokens"] > 0
    seqs = [e["seq"] for e in read_events(out)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir, reference):
    spec, out = _spec(tmp_path, tiny_model_dir), tmp_path / "out"
    process = _start(spec, out)
    _wait_for_step(process, out, 5)  # past the step-4 checkpoint, mid second epoch
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "manifest.json").exists()
    result = run_trainer(spec, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(e["message"].startswith("Resuming from checkpoint-") for e in read_events(out))
    _assert_same_run(out, reference)
    checkpoints = sorted((out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-6"]  # keep_last
    marker = json.loads((checkpoints[-1] / "checkpoint.json").read_text())
    assert marker["complete"] is True and marker["step"] == STEPS and marker["trained_tokens"] > 0
    assert marker["metrics"]["train_loss"] == _final_losses(out)[STEPS]
    assert (out / "results.csv").read_text().splitlines()[0] == \
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_75_and_resumes(tmp_path, tiny_model_dir, reference):
    spec, out = _spec(tmp_path, tiny_model_dir), tmp_path / "out"
    process = _start(spec, out)
    _wait_for_step(process, out, 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == exitcodes.STOPPED
    markers = [json.loads(p.read_text()) for p in (out / "checkpoints").glob("checkpoint-*/checkpoint.json")]
    stopped_at = max(m["step"] for m in markers)
    assert 2 <= stopped_at < STEPS
    assert not (out / "adapter_model.safetensors").exists()
    assert any("stopped by request" in e["message"] for e in read_events(out))
    result = run_trainer(spec, out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_run(out, reference)


def test_nan_loss_exits_3_with_a_clear_event(tmp_path, tiny_model_dir):
    spec = _spec(tmp_path, tiny_model_dir, hyperparameters={"learning_rate": 1e30, "n_epochs": 1, "max_grad_norm": 1e30})
    result = run_trainer(spec, tmp_path / "out")
    assert result.returncode == exitcodes.NON_FINITE_LOSS, result.stderr[-3000:]
    errors = [e for e in read_events(tmp_path / "out") if e["level"] == "error"]
    assert len(errors) == 1 and "the loss is" in errors[0]["message"]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_out_of_memory_exits_4(tmp_path, tiny_model_dir):
    long = [{"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "word " * 1500}]}] * 64

    spec = _spec(tmp_path, tiny_model_dir, hyperparameters={"batch_size": 64, "max_seq_length": 2048, "n_epochs": 1})
    data = json.loads(spec.read_text())
    data["training_file"] = str(write_jsonl(tmp_path / "long.jsonl", long))
    spec.write_text(json.dumps(data))
    limit = 6 * 1024**3  # logits alone would need ~19 GiB; the address-space cap turns that into an OOM

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run([str(TRAIN_BIN), "--spec", str(spec), "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, preexec_fn=cap,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == exitcodes.OUT_OF_MEMORY, result.stderr[-3000:]
    assert any(e["level"] == "error" and e["message"].startswith("Out of memory") for e in read_events(tmp_path / "out"))


@pytest.mark.parametrize("change, field", [
    ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
    ({"hyperparamters": {}}, "hyperparamters"),
    ({"peft": {"type": "prefix"}}, "peft.type"),
    ({"distribution": {"type": "deepspeed", "zero_stage": 4}}, "distribution.zero_stage"),
    ({"training_file": "missing.jsonl"}, "training_file"),
    ({"spec_version": 2}, "spec_version"),
])
def test_bad_spec_exits_2_naming_the_field(tmp_path, tiny_model_dir, change, field):
    spec = _spec(tmp_path, tiny_model_dir)
    data = json.loads(spec.read_text())
    data.update(change)
    spec.write_text(json.dumps(data))
    result = run_trainer(spec, tmp_path / "out", timeout=120)
    assert result.returncode == exitcodes.BAD_INPUT
    assert f"spec field {field}:" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_bad_data_line_exits_2_naming_the_line(tmp_path, tiny_model_dir):
    spec = _spec(tmp_path, tiny_model_dir)
    with open(tmp_path / "train.jsonl", "a") as handle:
        handle.write('{"messages": [{"role": "user"}]}\n')
    result = run_trainer(spec, tmp_path / "out", timeout=120)
    assert result.returncode == exitcodes.BAD_INPUT
    assert "training_file line 7: messages[0].content is missing" in result.stderr
    assert [e["level"] for e in read_events(tmp_path / "out")] == ["error"]
