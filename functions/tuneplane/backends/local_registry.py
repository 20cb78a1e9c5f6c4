"""The local model registry: versioned entries in a directory (the ModelRegistry port).

Layout under ``root`` (``${TUNEPLANE_HOME}/registry``)::

    <project>/<model-key>/v<N>/entry.json     the entry (name, version, lineage, tags)
    <project>/<model-key>/v<N>/artifacts/     a copy of the adapter or model folder

``model-key`` is derived from the name (``ft:`` names hold colons, which are not portable in paths),
and the readable name is inside ``entry.json``. The artifacts are copied, hard-linked where the file
system allows, so that a version stays valid after its run folder is cleaned up or rewritten.

Registration is idempotent: registering the same ``source_uri`` and tags again returns the existing
version. Anything else becomes a new version. A version appears whole or not at all, because it is
assembled in a temporary folder and renamed into place; a per-name ``flock`` serialises version
numbering between threads and processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_VERSION_DIR = re.compile(r"^v(\d+)$")
# Tags that describe where a model came from; they are also copied into the entry's ``lineage``.
LINEAGE_TAGS = ("job_id", "checkpoint_step", "base_model", "training_file")
# A registered model is for inference: a checkpoint's optimizer, scheduler and RNG state (and
# DeepSpeed's partitioned state) would only multiply its size.
_TRAINING_STATE = shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*.pth", "global_step*", ".*")


def _model_key(name: str) -> str:
    readable = _SAFE.sub("_", name).strip("._")[:80] or "model"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _project_key(project: str) -> str:
    if not project or _SAFE.search(project) or project.startswith("."):
        raise ValueError(f"project must be letters, digits, '_', '-' or '.', got {project!r}")
    return project


def _local_path(source_uri: str) -> Path:
    path = Path(source_uri[len("file://"):] if source_uri.startswith("file://") else source_uri)
    if not path.is_absolute():
        raise ValueError(f"source_uri must be an absolute local path or file:// uri, got {source_uri!r}")
    if not path.exists():
        raise FileNotFoundError(f"source_uri {source_uri!r} does not exist")
    return path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class LocalModelRegistry:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- ModelRegistry port ---------------------------------------------------------------------

    def register(
        self, *, project: str, name: str, source_uri: str, base_model: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        """Register a new version of ``name``, or return the version that already has this source."""
        if not name:
            raise ValueError("name must not be empty")
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        source = _local_path(source_uri)
        model_dir = self.root / _project_key(project) / _model_key(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(model_dir):
            # A crash mid-copy leaves a staging folder; under the lock nobody else is writing one.
            for stale in model_dir.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for entry in self._versions(model_dir):
                if (
                    entry["source_uri"] == str(source_uri)
                    and entry["base_model"] == base_model
                    and entry["tags"] == tags
                ):
                    return entry
            version = 1 + max((e["version"] for e in self._versions(model_dir)), default=0)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
            try:
                artifacts = staging / "artifacts"
                if source.is_dir():
                    shutil.copytree(source, artifacts, copy_function=_link_or_copy, ignore=_TRAINING_STATE)
                else:
                    artifacts.mkdir()
                    _link_or_copy(str(source), str(artifacts / source.name))
                final = model_dir / f"v{version}"
                entry = {
                    "object": "model.version",
                    "project": project,
                    "name": name,
                    "version": version,
                    "created_at": int(time.time()),
                    "base_model": base_model,
                    "source_uri": str(source_uri),
                    "path": str(final / "artifacts"),
                    "tags": tags,
                    "lineage": {"base_model": base_model, **{k: tags[k] for k in LINEAGE_TAGS if k in tags}},
                }
                (staging / "entry.json").write_text(json.dumps(entry, indent=2, sort_keys=True))
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return entry

    def get(self, project: str, name: str) -> dict[str, Any] | None:
        """The newest version of ``name`` in ``project``, or None."""
        try:
            model_dir = self.root / _project_key(project) / _model_key(name)
        except ValueError:
            return None
        versions = self._versions(model_dir)
        return versions[-1] if versions else None

    def list(self, project: str) -> list[dict[str, Any]]:
        """The newest version of every model in ``project``, newest registration first."""
        try:
            project_dir = self.root / _project_key(project)
        except ValueError:
            return []
        if not project_dir.is_dir():
            return []
        latest = [v[-1] for d in project_dir.iterdir() if d.is_dir() and (v := self._versions(d))]
        return sorted(latest, key=lambda e: (e["created_at"], e["name"]), reverse=True)

    # -- beyond the port ------------------------------------------------------------------------

    def versions(self, project: str, name: str) -> list[dict[str, Any]]:
        """Every version of ``name``, oldest first."""
        try:
            return self._versions(self.root / _project_key(project) / _model_key(name))
        except ValueError:
            return []

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _versions(model_dir: Path) -> list[dict[str, Any]]:
        if not model_dir.is_dir():
            return []
        found = []
        for child in model_dir.iterdir():
            match = _VERSION_DIR.match(child.name)
            entry_file = child / "entry.json"
            if match and entry_file.is_file():
                found.append((int(match.group(1)), json.loads(entry_file.read_text())))
        return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]

    @staticmethod
    @contextmanager
    def _locked(model_dir: Path) -> Iterator[None]:
        with open(model_dir / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
