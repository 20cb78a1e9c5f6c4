"""A stand-in for ``tuneplane-train`` that follows its output contract (training/SPEC.md) in
milliseconds, for the runner's process mechanics only (the e2e tests run the real trainer).

Behaviour comes from the spec's ``base_model``: ``fake:steps=6,sleep=0.1,every=2,exit=0,ignore_term=0``.
Each start and end is appended to ``$FAKE_TRAINER_LEDGER`` so tests can check that runs of a job
never overlap and where each attempt resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def ledger(record: dict) -> None:
    path = os.environ.get("FAKE_TRAINER_LEDGER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    knobs = dict(part.split("=") for part in spec["base_model"].removeprefix("fake:").split(",") if part)
    steps, pause = int(knobs.get("steps", 6)), float(knobs.get("sleep", 0.1))
    every, exit_code = int(knobs.get("every", 2)), int(knobs.get("exit", 0))
    out = Path(args.output_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    events = out / "events.jsonl"
    seq = len(events.read_text().splitlines()) if events.exists() else 0

    def emit(message: str, level: str = "info", kind: str = "message", data: dict | None = None) -> None:
        nonlocal seq
        seq += 1
        line = json.dumps({"seq": seq, "created_at": int(time.time()), "level": level, "message": message, "type": kind, "data": data})
        with open(events, "a") as fh:
            fh.write(line + "\n")

    def checkpoint(step: int) -> None:
        folder = out / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_text(f"step {step}")
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "metrics": {"train_loss": 1.0 / step}, "complete": True}))

    done = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*") if (p / "checkpoint.json").exists()]
    start = max(done, default=0)
    stop = {"asked": False}
    if knobs.get("ignore_term") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    ledger({"event": "start", "job": spec["job_id"], "pid": os.getpid(), "from_step": start, "t": time.time()})
    emit(f"Training started at step {start}")
    for step in range(start + 1, steps + 1):
        time.sleep(pause)
        emit(f"Step {step}/{steps}", kind="metrics",
             data={"step": step, "total_steps": steps, "trained_tokens": 10 * step, "train_loss": 1.0 / step})
        if step % every == 0 or stop["asked"]:
            checkpoint(step)
        if stop["asked"]:
            ledger({"event": "end", "job": spec["job_id"], "pid": os.getpid(), "code": 75, "t": time.time()})
            return 75
    if exit_code:
        emit("training_file line 3: the assistant message has no content", level="error")
        ledger({"event": "end", "job": spec["job_id"], "pid": os.getpid(), "code": exit_code, "t": time.time()})
        return exit_code
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_text("final")
    (out / "results.csv").write_text("step,train_loss\n" + "".join(f"{s},{1.0 / s}\n" for s in range(1, steps + 1)))
    (out / "manifest.json").write_text(json.dumps({"trained_tokens": 10 * steps}))
    emit("Training finished")
    ledger({"event": "end", "job": spec["job_id"], "pid": os.getpid(), "code": 0, "t": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
