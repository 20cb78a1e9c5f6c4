"""Reading a trainer output folder (training/SPEC.md) into the control plane's records.

The folder is the contract between the trainer and every backend: the local runner reads it in
place, and an Azure backend reads the same files from the job's outputs. Everything here is a pure
function of the files, so reading twice gives the same records with the same ids: events and
checkpoints are appended idempotently, however often the reconciler looks.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

from tuneplane.domain.ids import fine_tuned_model_name
from tuneplane.domain.records import CheckpointRecord, EventRecord, JobRecord

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_cache: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
_cache_lock = threading.Lock()


def stable_id(prefix: str, stamp: int, key: str) -> str:
    """An id in tuneplane.domain.ids' shape that is a pure function of its inputs.

    ``stamp`` (microseconds, or any number that orders the records) comes first, so sorting ids
    sorts records; the hash of ``key`` keeps different records apart.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{prefix}-{max(0, int(stamp)):014x}{digest[:10]}"


def _event_lines(path: Path) -> list[dict[str, Any]]:
    """The parsed lines of events.jsonl, re-read only when the file changed."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    signature = (stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(str(path))
        if hit and hit[0] == signature:
            return hit[1]
    lines: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            if not raw.endswith("\n"):
                break  # the trainer is still writing this line
            try:
                item = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(item, dict):
                item["_raw"] = raw
                lines.append(item)
    with _cache_lock:
        _cache[str(path)] = (signature, lines)
    return lines


def read_events(job_id: str, path: Path) -> list[EventRecord]:
    events = []
    for index, line in enumerate(_event_lines(path)):
        created = line.get("created_at")
        if not isinstance(created, (int, float)):
            created = 0
        level = line.get("level") if line.get("level") in ("info", "warn", "error") else "info"
        kind = line.get("type") if line.get("type") in ("message", "metrics") else "message"
        data = line.get("data") if isinstance(line.get("data"), dict) else None
        # The trainer stamps whole seconds and a ``seq`` that keeps counting across resumes: the
        # seq orders events within a second and identifies each event for idempotent appends.
        seq = line.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            stamp, key = int(created) * 1_000_000 + seq % 1_000_000, f"{job_id}\n{seq}"
        else:
            stamp, key = int(created * 1_000_000), f"{job_id}\n{index}\n{line['_raw']}"
        events.append(
            EventRecord(
                id=stable_id("ftevent", stamp, key),
                job_id=job_id,
                created_at=int(created),
                level=level,
                message=str(line.get("message", "")),
                type=kind,
                data=data,
            )
        )
    return events


def metric_events(path: Path) -> list[dict[str, Any]]:
    return [line for line in _event_lines(path) if line.get("type") == "metrics" and isinstance(line.get("data"), dict)]


def progress(output: Path, since: float | None = None) -> dict[str, Any]:
    """``trained_tokens`` and ``estimated_finish`` from the metrics events (and the manifest, if done)."""
    found: dict[str, Any] = {"trained_tokens": None, "estimated_finish": None}
    metrics = metric_events(output / "events.jsonl")
    manifest = _read_json(output / "manifest.json")
    if manifest and isinstance(manifest.get("trained_tokens"), int):
        found["trained_tokens"] = manifest["trained_tokens"]
    elif metrics and isinstance(metrics[-1]["data"].get("trained_tokens"), int):
        found["trained_tokens"] = metrics[-1]["data"]["trained_tokens"]
    # Rate from this attempt only: the pause between attempts says nothing about training speed.
    recent = [m for m in metrics if since is None or m.get("created_at", 0) >= since]
    if len(recent) >= 2 and not manifest:
        first, last = recent[0], recent[-1]
        steps = _num(last["data"].get("step")) - _num(first["data"].get("step"))
        total = _num(last["data"].get("total_steps"))
        elapsed = _num(last.get("created_at")) - _num(first.get("created_at"))
        if steps > 0 and total and elapsed >= 0:
            remaining = max(0.0, total - _num(last["data"].get("step")))
            found["estimated_finish"] = int(_num(last.get("created_at")) + elapsed / steps * remaining)
    return found


def read_checkpoints(job: JobRecord, output: Path) -> list[CheckpointRecord]:
    """Complete checkpoints only: ``checkpoint.json`` with ``complete: true`` is written last."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    name = fine_tuned_model_name(job.model, job.project, job.user_provided_suffix, job.id)
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        info = _read_json(child / "checkpoint.json") if match else None
        if not info or info.get("complete") is not True:
            continue
        step = int(match.group(1))
        created = info.get("created_at")
        if not isinstance(created, (int, float)):
            created = (child / "checkpoint.json").stat().st_mtime
        raw_metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}
        metrics: dict[str, float | None] = {"step": float(step)}
        for key, value in raw_metrics.items():
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                metrics[key] = None if value is None else float(value)
        found.append(
            CheckpointRecord(
                # Ordered by step (the order they were made in) and stable if a marker is rewritten.
                id=stable_id("ftckpt", step, f"{job.id}\n{step}"),
                job_id=job.id,
                created_at=int(created),
                step_number=step,
                fine_tuned_model_checkpoint=f"{name}:ckpt-step-{step}",
                metrics=metrics,
                location=str(child),
            )
        )
    return sorted(found, key=lambda c: c.step_number)


def trainer_failure(returncode: int, output: Path, log: Path) -> dict[str, Any]:
    """The job ``error`` for a failed run: a code from the exit status, the trainer's own message."""
    message = _last_error_message(output / "events.jsonl") or _last_log_line(log)
    if returncode == 2:
        file_problem = any(word in message for word in ("training_file", "validation_file", "line "))
        return {
            "code": "invalid_training_file" if file_problem else "invalid_spec",
            "message": message or "The trainer rejected its input.",
            "param": ("validation_file" if "validation_file" in message else "training_file") if file_problem else None,
        }
    if returncode == 3:
        return {"code": "non_finite_loss", "message": message or "The training loss became NaN or infinite."}
    if returncode == 4:
        return {"code": "out_of_memory", "message": message or "The trainer ran out of memory."}
    if returncode < 0:
        return {"code": "trainer_crashed", "message": f"The trainer was killed by signal {-returncode}. {message}".strip()}
    return {
        "code": "training_error",
        "message": message or f"The trainer failed with exit code {returncode}.",
    }


def _last_error_message(path: Path) -> str:
    for line in reversed(_event_lines(path)):
        if line.get("level") == "error" and line.get("message"):
            return str(line["message"])[:2000]
    return ""


def _last_log_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("--- attempt")]
    return lines[-1][:2000] if lines else ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
