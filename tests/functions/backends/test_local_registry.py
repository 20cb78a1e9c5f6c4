"""The local model registry: versions, idempotency, lineage, atomicity and concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tuneplane.backends.local_registry import LocalModelRegistry
from tuneplane.ports import ModelRegistry

NAME = "ft:tiny-random-llama:default:demo:ftjob-0001"


def _adapter(path: Path, payload: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (path / "adapter_model.safetensors").write_text(payload)
    return path


def test_satisfies_the_port(tmp_path):
    assert isinstance(LocalModelRegistry(tmp_path / "registry"), ModelRegistry)


def test_register_copies_artifacts_and_records_lineage(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    source = _adapter(tmp_path / "run" / "output", "weights-1")
    entry = registry.register(
        project="default",
        name=NAME,
        source_uri=str(source),
        base_model="tiny-random-llama",
        tags={"job_id": "ftjob-0001", "checkpoint_step": 12},
    )
    assert entry["version"] == 1
    assert entry["name"] == NAME
    assert entry["lineage"] == {"base_model": "tiny-random-llama", "job_id": "ftjob-0001", "checkpoint_step": "12"}
    copied = Path(entry["path"])
    assert (copied / "adapter_model.safetensors").read_text() == "weights-1"
    # The version survives the run folder being cleaned up.
    (source / "adapter_model.safetensors").unlink()
    assert (copied / "adapter_model.safetensors").read_text() == "weights-1"
    assert registry.get("default", NAME) == entry


def test_training_state_is_not_copied(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    checkpoint = _adapter(tmp_path / "checkpoint-4", "w")
    (checkpoint / "optimizer.pt").write_text("big")
    (checkpoint / "rng_state.pth").write_text("rng")
    entry = registry.register(project="p", name=NAME + ":ckpt-step-4", source_uri=str(checkpoint), base_model="m", tags={})
    assert sorted(p.name for p in Path(entry["path"]).iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_register_is_idempotent_and_new_sources_make_new_versions(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    first = _adapter(tmp_path / "a", "one")
    second = _adapter(tmp_path / "b", "two")
    tags = {"job_id": "ftjob-0001"}
    e1 = registry.register(project="default", name=NAME, source_uri=str(first), base_model="m", tags=tags)
    again = registry.register(project="default", name=NAME, source_uri=str(first), base_model="m", tags=tags)
    assert again == e1
    e2 = registry.register(project="default", name=NAME, source_uri=str(second), base_model="m", tags=tags)
    assert (e1["version"], e2["version"]) == (1, 2)
    assert registry.get("default", NAME)["version"] == 2
    assert [v["version"] for v in registry.versions("default", NAME)] == [1, 2]
    assert [e["version"] for e in registry.list("default")] == [2]


def test_projects_are_isolated(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    source = _adapter(tmp_path / "a", "one")
    registry.register(project="alpha", name=NAME, source_uri=str(source), base_model="m", tags={})
    assert registry.get("beta", NAME) is None
    assert registry.list("beta") == []
    assert [e["name"] for e in registry.list("alpha")] == [NAME]


@pytest.mark.parametrize("project", ["../escape", "", "a/b", ".hidden"])
def test_bad_project_is_rejected_and_never_touches_the_disk(tmp_path, project):
    registry = LocalModelRegistry(tmp_path / "registry")
    source = _adapter(tmp_path / "a", "one")
    with pytest.raises(ValueError, match="project"):
        registry.register(project=project, name=NAME, source_uri=str(source), base_model="m", tags={})
    assert list((tmp_path / "registry").iterdir()) == []
    assert registry.get(project, NAME) is None


def test_missing_or_relative_source_is_rejected(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    with pytest.raises(FileNotFoundError, match="source_uri"):
        registry.register(project="p", name=NAME, source_uri=str(tmp_path / "nope"), base_model="m", tags={})
    with pytest.raises(ValueError, match="source_uri"):
        registry.register(project="p", name=NAME, source_uri="relative/path", base_model="m", tags={})
    assert registry.get("p", NAME) is None


def test_a_crash_mid_copy_leaves_no_version(tmp_path, monkeypatch):
    registry = LocalModelRegistry(tmp_path / "registry")
    source = _adapter(tmp_path / "a", "one")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("tuneplane.backends.local_registry._link_or_copy", boom)
    with pytest.raises(OSError):
        registry.register(project="p", name=NAME, source_uri=str(source), base_model="m", tags={})
    assert registry.get("p", NAME) is None
    monkeypatch.undo()
    entry = registry.register(project="p", name=NAME, source_uri=str(source), base_model="m", tags={})
    assert entry["version"] == 1


def test_concurrent_registrations_get_distinct_versions(tmp_path):
    registry = LocalModelRegistry(tmp_path / "registry")
    sources = [_adapter(tmp_path / f"s{i}", str(i)) for i in range(8)]
    results: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda s=s: results.append(
                registry.register(project="p", name=NAME, source_uri=str(s), base_model="m", tags={})
            )
        )
        for s in sources
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["version"] for e in results) == list(range(1, 9))
    by_version = {e["version"]: Path(e["path"]) for e in registry.versions("p", NAME)}
    assert len(by_version) == 8
