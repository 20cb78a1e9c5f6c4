"""scripts/publish-functions: the Function App package carries training/, and the control plane in
that package finds it through TUNEPLANE_AZURE_TRAINING_DIR=training (the Pulumi program's value), or
by default, so Azure ML jobs and deployments upload the trainer as their code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "publish-functions"

PROBE = """
import json, os, sys
import tuneplane
from tuneplane.backends import azure_ml_jobs as jobs
from tuneplane.backends.azure_config import AzureSettings
print(json.dumps({"package": tuneplane.__file__, "from_setting": jobs.code_of(AzureSettings().training_dir),
                  "default": jobs.code_of(None), "heavy": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("torch", "transformers", "peft") or m.startswith("azure.ai.ml"))}))
"""


def test_the_package_carries_training_and_the_control_plane_finds_it(tmp_path):
    out = tmp_path / "site" / "wwwroot"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--zip"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    for path in ("function_app.py", "host.json", "requirements.txt", "tuneplane/app.py",
                 "training/tuneplane_training/cli.py", "training/environment/Dockerfile",
                 "training/environment/requirements.txt", "training/SPEC.md"):
        assert (out / path).is_file(), path
    assert not list(out.rglob("__pycache__")) and not (out / "local.settings.json.example").exists()
    with zipfile.ZipFile(out.with_suffix(".zip")) as zf:
        names = set(zf.namelist())
    assert {"function_app.py", "training/tuneplane_training/cli.py", "tuneplane/backends/azure_ml_jobs.py"} <= names

    # The packaged control plane, run from elsewhere as the Functions host runs it (app root on the path).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(out), "TUNEPLANE_AZURE_TRAINING_DIR": "training",
           "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(out)  # the copy, not the repository's
    assert result["from_setting"] == str(out / "training")
    assert result["default"] == str(out / "training")  # no repository around it: the packaged copy
    assert result["heavy"] == []


def test_the_script_refuses_to_overwrite_the_sources():
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(ROOT / "functions")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "refusing" in run.stderr
    assert (ROOT / "functions" / "function_app.py").is_file()
