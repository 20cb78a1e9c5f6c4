"""events.jsonl, results.csv and checkpoint markers: the files the control plane polls."""

import json

from tuneplane_training.outputs import (EventLog, complete_checkpoints, prune_checkpoints, write_checkpoint_marker,
                                        write_manifest, write_results_csv)


def test_event_seq_continues_across_processes_and_skips_a_torn_line(tmp_path):
    log = EventLog(tmp_path)
    log.emit("one")
    log.metrics({"step": 1, "total_steps": 2, "trained_tokens": 10, "train_loss": 2.0, "train_mean_token_accuracy": 0.5})
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"seq": 99, "mess')  # what a SIGKILL mid-write could leave
    resumed = EventLog(tmp_path)
    resumed.emit("two", level="warn")
    events = resumed.read()
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[1]["type"] == "metrics" and events[1]["data"]["valid_loss"] is None
    assert set(events[1]["data"]) == {"step", "total_steps", "trained_tokens", "train_loss",
                                      "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"}
    assert events[2]["level"] == "warn" and isinstance(events[2]["created_at"], int)


def test_results_csv_merges_train_and_valid_and_replayed_steps(tmp_path):
    def metrics(step, **data):
        return {"type": "metrics", "data": {"step": step, **data}}

    write_results_csv(tmp_path, [
        metrics(1, train_loss=3.0, train_mean_token_accuracy=0.1),
        metrics(2, train_loss=2.5, train_mean_token_accuracy=0.2),
        metrics(2, train_loss=2.4, train_mean_token_accuracy=0.25),  # replayed after a resume
        metrics(2, valid_loss=2.6, valid_mean_token_accuracy=0.3),
        {"type": "message", "data": {"step": 2}},
    ])
    assert (tmp_path / "results.csv").read_text().splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,3.0,0.1,,",
        "2,2.4,0.25,2.6,0.3",
    ]


def test_only_marked_checkpoints_count_and_pruning_keeps_the_newest(tmp_path):
    for step in (2, 4, 10, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4, 10):
        write_checkpoint_marker(tmp_path / f"checkpoint-{step}", {"step": step})
    (tmp_path / "checkpoint-4" / "checkpoint.json").write_text('{"step": 4, "complete": false}')
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
    prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-12", "checkpoint-4"]


def test_manifest_hashes_root_files(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"abc")
    (tmp_path / "events.jsonl").write_text("{}\n")
    manifest = write_manifest(tmp_path, {"job_id": "ftjob-1"})
    assert manifest["files"] == {"adapter_model.safetensors":
                                 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
