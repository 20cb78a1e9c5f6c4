"""A real tuneplane server (uvicorn in a subprocess, free loopback port) for end-to-end tests.

The server is configured only through ``TUNEPLANE_*`` environment variables built from Settings, so
the same tests run against any backend in E2E_BACKENDS (the Azure helper adds one backed by Azurite).
The test process opens the same stores the server uses, to check that a refused request left no
record and no content behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tuneplane.services.keys import issue_key
from tuneplane.settings import Settings
from tuneplane.wiring import Adapters, build_adapters

E2E_BACKENDS = ["local", "azure"]
MAX_UPLOAD_BYTES = 256 * 1024  # small, so the oversized-file case stays fast
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TUNEPLANE_{name.upper()}"] = str(value)
    return env


@dataclass
class Server:
    base_url: str  # http://127.0.0.1:PORT
    settings: Settings
    adapters: Adapters
    process: subprocess.Popen
    keys: dict[str, str] = field(default_factory=dict)  # project -> secret

    @property
    def key(self) -> str:
        return self.keys["default"]

    def key_for(self, project: str) -> str:
        if project not in self.keys:
            _, self.keys[project] = issue_key(self.adapters.keys, project, name="e2e")
        return self.keys[project]

    def client(self, project: str = "default", **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url + "/v1",
            headers={"Authorization": f"Bearer {self.key_for(project)}"},
            timeout=60,
            **kwargs,
        )

    def snapshot(self) -> dict:
        """Everything stored: each known project's files and jobs, and the content objects."""
        state: dict = {}
        for project in self.keys:
            state[f"files/{project}"] = sorted(f.id for f in self.adapters.files.list_files(project, limit=100_000))
            jobs, after = [], None
            while page := self.adapters.jobs.list_jobs(project, limit=1000, after=after):
                jobs += [j.id for j in page]
                after = page[-1].id
            state[f"jobs/{project}"] = sorted(jobs)
        contents = getattr(self.adapters.contents, "root", None)
        if hasattr(self.adapters.contents, "list_keys"):  # a blob container: only committed blobs list
            state["contents"] = self.adapters.contents.list_keys("")
        if contents is not None:
            state["contents"] = sorted(p.name for p in Path(contents).iterdir() if p.name != ".tmp")
            state["pending"] = sorted(p.name for p in (Path(contents) / ".tmp").iterdir())
        return state


def start_server(settings: Settings, *, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = os.environ | settings_env(settings) | (extra_env or {})
    return subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory",
            "--host", settings.host, "--port", str(settings.port), "--log-level", "warning",
        ],
        env=env,
        cwd=ROOT,
    )


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def backend_settings(backend: str, home: Path) -> Settings:
    if backend == "local":
        # API tests move job states through the store themselves; no reconciler may race them (and
        # none should train their jobs). tests/e2e/test_lifecycle_local.py runs it for real.
        return Settings(backend="local", home=home, reconciler=False)
    if backend == "azure":
        # Table and Blob Storage on the session's Azurite (fresh tables and container). The server
        # reads TUNEPLANE_AZURE_* from the environment it inherits, as the Function App does.
        from tests.azurite import shared_azurite

        azurite = shared_azurite()
        os.environ.update({
            "TUNEPLANE_AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "TUNEPLANE_AZURE_TABLE_PREFIX": azurite.unique_name("e"),
            "TUNEPLANE_AZURE_FILES_CONTAINER": azurite.unique_name("e"),
        })
        return Settings(backend="azure", home=home, reconciler=False)
    raise ValueError(f"no e2e settings for backend {backend!r}")


@pytest.fixture(scope="session", params=E2E_BACKENDS)
def server(request, tmp_path_factory):
    port = free_port()
    base = backend_settings(request.param, tmp_path_factory.mktemp("server"))
    settings = base.model_copy(
        update={
            "port": port,
            "api_key": "tp-e2e-default-key",
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "key_cache_seconds": 0.0,  # so a revoked key stops working at once
        }
        # API tests check what the API itself writes (jobs stay queued): no reconciler runs them.
        | ({"reconciler": False} if "reconciler" in Settings.model_fields else {})
    )
    process = start_server(settings)
    adapters = build_adapters(settings)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        srv = Server(f"http://127.0.0.1:{port}", settings, adapters, process, keys={"default": settings.api_key})
        yield srv
    finally:
        stop(process)
        adapters.close()


@pytest.fixture
def api(server):
    with server.client() as client:
        yield client
