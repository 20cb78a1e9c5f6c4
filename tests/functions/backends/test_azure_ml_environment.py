"""The Azure ML environment (training/environment) and the import-time weight of the Azure adapters."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ENVIRONMENT = ROOT / "training" / "environment"


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert match, f"requirements.txt: {line!r} is not pinned with =="
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_pin_exactly_the_training_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    everything = _pins([p for extra in extras.values() for p in extra])
    training = _pins(extras["training"])
    required = _pins((ENVIRONMENT / "requirements.txt").read_text().splitlines())
    for name, version in training.items():
        assert required.get(name) == version, f"requirements.txt: {name} must be =={version} as in pyproject.toml"
    for name, version in required.items():
        if name in everything:
            assert everything[name] == version, f"requirements.txt: {name}=={version} disagrees with pyproject.toml"


def test_dockerfile_builds_on_azure_container_for_pytorch_and_provides_the_entry_point():
    dockerfile = (ENVIRONMENT / "Dockerfile").read_text()
    assert re.search(r"^FROM mcr\.microsoft\.com/azureml/curated/acpt-pytorch-", dockerfile, re.MULTILINE)
    assert "requirements.txt" in dockerfile
    assert "python -m tuneplane_training.cli" in dockerfile and "/usr/local/bin/tuneplane-train" in dockerfile
    assert (ROOT / "training" / "tuneplane_training" / "cli.py").is_file()


def test_the_azure_adapters_import_no_sdk_until_used():
    code = (
        "import sys\n"
        "import tuneplane.stores.azure, tuneplane.stores.azure_tables, tuneplane.stores.azure_blob\n"
        "import tuneplane.backends.azure_ml, tuneplane.backends.azure_ml_deploy, tuneplane.domain.estimate\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'torch', 'transformers', 'peft'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
