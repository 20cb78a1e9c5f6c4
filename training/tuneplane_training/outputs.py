"""What the trainer leaves in its output folder besides the weights: ``events.jsonl``,
``results.csv``, ``checkpoints/*/checkpoint.json`` and ``manifest.json``. Only rank 0 writes them.

Files that readers poll (checkpoint.json, results.csv, manifest.json) are written to a temporary
name and renamed, so a reader never sees half a file. events.jsonl is append-only; each line is one
whole JSON object written with a single write call, and ``seq`` keeps counting across resumes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

CHECKPOINT_MARKER = "checkpoint.json"
# OpenAI's results.csv columns for fine-tuning jobs.
RESULTS_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
METRIC_KEYS = ["step", "total_steps", "trained_tokens", "train_loss", "train_mean_token_accuracy",
               "valid_loss", "valid_mean_token_accuracy"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EventLog:
    def __init__(self, output_dir: Path, enabled: bool = True):
        self.path = Path(output_dir) / "events.jsonl"
        self.enabled = enabled
        self.seq = self._last_seq() if enabled else 0
        if enabled:
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        # A run killed mid-write can leave a last line without its newline; close it so our first
        # event starts on a line of its own (readers skip the torn one).
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")

    def _last_seq(self) -> int:
        if not self.path.is_file():
            return 0
        last = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                last = max(last, int(json.loads(line).get("seq", 0)))
            except (ValueError, AttributeError):
                continue  # a torn last line from a killed run is skipped, not fatal
        return last

    def emit(self, message: str, level: str = "info", type_: str = "message", data: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        self.seq += 1
        event = {"seq": self.seq, "created_at": int(time.time()), "level": level, "message": message,
                 "type": type_, "data": data}
        line = json.dumps(event, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND + one write: a killed process leaves whole lines (or a torn last one, which
        # readers skip), never interleaved halves.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def metrics(self, data: dict[str, Any]) -> None:
        step, total = data.get("step"), data.get("total_steps")
        parts = [f"Step {step}/{total}"]
        for key in ("train_loss", "valid_loss"):
            if data.get(key) is not None:
                parts.append(f"{key}={data[key]:.4f}")
        self.emit(": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0],
                  type_="metrics", data={**{k: None for k in METRIC_KEYS}, **data})

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def write_results_csv(output_dir: Path, events: list[dict[str, Any]]) -> None:
    """One row per step from the metrics events; after a resume the replayed steps' last values win."""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.get("data") or {}
        if event.get("type") != "metrics" or data.get("step") is None:
            continue
        row = rows.setdefault(int(data["step"]), {"step": int(data["step"])})
        if data.get("train_loss") is not None:
            row["train_loss"] = data["train_loss"]
            row["train_accuracy"] = data.get("train_mean_token_accuracy")
        if data.get("valid_loss") is not None:
            row["valid_loss"] = data["valid_loss"]
            row["valid_mean_token_accuracy"] = data.get("valid_mean_token_accuracy")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULTS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({k: ("" if rows[step].get(k) is None else rows[step][k]) for k in RESULTS_COLUMNS})
    write_atomic(Path(output_dir) / "results.csv", buffer.getvalue())


def write_checkpoint_marker(folder: Path, info: dict[str, Any]) -> None:
    write_atomic(folder / CHECKPOINT_MARKER, json.dumps({**info, "complete": True}, indent=2) + "\n")


def read_checkpoint_marker(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if info.get("complete") is True else None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a folder without a complete marker is never used."""
    found = []
    for folder in Path(checkpoints_dir).glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and suffix.isdigit() and read_checkpoint_marker(folder) is not None:
            found.append((int(suffix), folder))
    return [folder for _, folder in sorted(found)]


def prune_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    """Delete the oldest complete checkpoints beyond ``keep_last``. Runs only after the newest one's
    marker is written, so a kill at any moment leaves at least one complete checkpoint (Trainer's own
    rotation runs before our marker exists, which is why it is switched off)."""
    import shutil

    for folder in complete_checkpoints(checkpoints_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(output_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    output_dir = Path(output_dir)
    files = {}
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name not in ("manifest.json", "events.jsonl") and not path.name.startswith("."):
            files[path.name] = sha256_file(path)
    manifest = {**manifest, "files": files}
    write_atomic(output_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
