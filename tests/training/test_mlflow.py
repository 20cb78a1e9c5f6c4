"""Metrics reach MLflow when MLFLOW_TRACKING_URI is set (as Azure ML sets it) and mlflow is importable.

mlflow is optional and not installed here; the tracking server is the cloud's, so a stand-in module
that records calls takes its place at that boundary."""

import json
import sys

from tuneplane_training.run import train
from tuneplane_training.spec import load_spec

RECORDER = '''
import json, os
def log_metrics(metrics, step=None):
    with open(os.environ["MLFLOW_RECORD"], "a") as handle:
        handle.write(json.dumps({"step": step, "metrics": metrics}) + "\\n")
'''


def test_metrics_go_to_mlflow_when_configured(tmp_path, make_spec, monkeypatch):
    (tmp_path / "stand_in").mkdir()
    (tmp_path / "stand_in" / "mlflow.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path / "stand_in"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://example")
    monkeypatch.setenv("MLFLOW_RECORD", str(tmp_path / "record.jsonl"))
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    spec = load_spec(make_spec(tmp_path, validation_rows=[{"messages": [
        {"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."}]}],
        hyperparameters={"max_steps": 2, "batch_size": 2}))
    train(spec, tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r["metrics"]] == [1, 2]
    assert any("valid_loss" in r["metrics"] for r in records)
