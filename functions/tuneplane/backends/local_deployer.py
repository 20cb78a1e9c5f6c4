"""The local Deployer: fine-tuned models served by local inference processes on loopback.

One inference process (``python -m tuneplane_training.serving``) runs per base model and serves the
base plus every LoRA adapter deployed on it, loading adapters on demand (multi-LoRA: many fine-tuned
models share one base in memory). A fully fine-tuned model is its own base, so it gets its own
process. Processes start on demand on a free port, are health-checked before use, restarted when
they died, and stopped when the control plane shuts down.

The process runs torch, so it lives in a subprocess: nothing here imports torch, transformers or peft.

State is persisted in ``<root>/deployments.json`` (written atomically): which models are deployed
and which process serves each base (port, pid). A restarted control plane re-adopts a process that
still answers ``/health`` for the same base (a ``kill -9`` of the server leaves it running: it sits in
its own session), and otherwise starts a new one and registers the base's adapters with it again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tuneplane.ports import BackendError, BackendUnavailable, PermanentBackendError

log = logging.getLogger("tuneplane.deployer")

STATE_FILE = "deployments.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_path(source_uri: str) -> Path:
    return Path(source_uri[len("file://"):] if source_uri.startswith("file://") else source_uri)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalDeployer:
    """The Deployer port on this machine. Thread-safe; one instance per control-plane process."""

    def __init__(
        self,
        root: Path | str,
        *,
        python: str = sys.executable,
        startup_timeout: float = 600.0,
        device: str | None = None,
        max_loaded_adapters: int = 8,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.python = python
        self.startup_timeout = startup_timeout
        self.device = device
        self.max_loaded_adapters = max_loaded_adapters
        self.env = env
        self._state_lock = threading.RLock()
        self._server_locks: dict[str, threading.Lock] = {}
        self._children: dict[str, subprocess.Popen] = {}  # processes this instance started
        self._ready: set[str] = set()  # servers checked healthy since this instance started
        self._http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))

    # -- the Deployer port ---------------------------------------------------------------------

    def deploy(self, *, project: str, model: str, base_model: str, source_uri: str) -> dict[str, Any]:
        """Serve ``model``: idempotent; blocks until it answers (the base process may have to start)."""
        kind, server = self._placement(project, model, base_model, source_uri)
        record = {
            "project": project, "model": model, "base_model": base_model, "source_uri": source_uri,
            "kind": kind, "server": server, "status": "deploying", "created_at": int(time.time()), "error": None,
        }
        with self._state_lock:
            state = self._load()
            existing = state["deployments"].get(self._key(project, model))
            if existing and existing["source_uri"] == source_uri and existing["status"] == "succeeded":
                record = existing
            else:
                if existing:
                    record["created_at"] = existing["created_at"]
                state["deployments"][self._key(project, model)] = record
                self._save(state)
        try:
            endpoint = self._ensure_server(server)
            if kind == "adapter":
                self._register_adapter(endpoint, model, source_uri)
        except BackendError as exc:
            self._set_status(project, model, "failed", {"code": exc.code, "message": exc.message})
            raise
        return self._render(self._set_status(project, model, "succeeded", None))

    def status(self, project: str, model: str) -> dict[str, Any] | None:
        with self._state_lock:
            record = self._load()["deployments"].get(self._key(project, model))
        return self._render(record) if record else None

    def undeploy(self, project: str, model: str) -> bool:
        with self._state_lock:
            state = self._load()
            record = state["deployments"].pop(self._key(project, model), None)
            if record is None:
                return False
            self._save(state)
        info = self._server_info(record["server"])
        if record["kind"] == "adapter" and info and record["server"] in self._ready:
            try:
                self._http.delete(f"http://127.0.0.1:{info['port']}/adapters/{record['model']}")
            except httpx.HTTPError:
                pass  # the process is gone, and so is the adapter with it
        elif record["kind"] == "full":
            self.stop_server(record["server"])
        return True

    # -- beyond the port -----------------------------------------------------------------------

    def list(self, project: str) -> list[dict[str, Any]]:
        with self._state_lock:
            records = [r for r in self._load()["deployments"].values() if r["project"] == project]
        return [self._render(r) for r in sorted(records, key=lambda r: (r["created_at"], r["model"]), reverse=True)]

    def endpoint_for(self, project: str, model: str) -> str | None:
        """The base URL of the process serving this deployed model (started or revived if needed),
        or None if the model is not deployed in this project."""
        with self._state_lock:
            record = self._load()["deployments"].get(self._key(project, model))
        if record is None or record["status"] != "succeeded":
            return None
        return self._ensure_server(record["server"])

    def base_endpoint(self, base_model: str) -> str:
        """The process serving a catalog base model, started on demand."""
        return self._ensure_server(self._base_server(base_model))

    def revive(self, project: str, model: str) -> str | None:
        """Called when a request could not reach the process: forget it was healthy, then ensure it."""
        with self._state_lock:
            record = self._load()["deployments"].get(self._key(project, model))
        server = record["server"] if record else self._base_server(model)
        self._ready.discard(server)
        return self._ensure_server(server) if record or self._server_info(server) else None

    def recover(self) -> None:
        """At start-up: adopt processes a previous control plane left running (cheap; nothing starts)."""
        with self._state_lock:
            servers = dict(self._load()["servers"])
        for key, info in servers.items():
            if self._healthy(info):
                self._ready.add(key)

    def stop_server(self, server: str, *, forget: bool = True) -> None:
        """Stop the process of ``server`` if this control plane started or adopted it; ``forget``
        drops its configuration too (otherwise the next use starts it again)."""
        with self._lock_for(server):
            child = self._children.pop(server, None)
            owned = child is not None or server in self._ready
            with self._state_lock:
                state = self._load()
                info = state["servers"].pop(server, None) or {}
                if not forget:
                    state["servers"][server] = {k: v for k, v in info.items() if k in ("source", "served_name")}
                self._save(state)
            self._ready.discard(server)
            pid = child.pid if child else info.get("pid")
            if owned and pid and (child.poll() is None if child else _pid_alive(pid)):
                self._terminate(pid, child)

    def close(self) -> None:
        """Stop every inference process (the control plane is shutting down); deployments stay
        recorded, so the next start serves them again."""
        with self._state_lock:
            servers = list(self._load()["servers"])
        for server in servers:
            self.stop_server(server, forget=False)
        self._http.close()

    # -- placement -----------------------------------------------------------------------------

    def _placement(self, project: str, model: str, base_model: str, source_uri: str) -> tuple[str, str]:
        if model == base_model:
            return "base", self._base_server(base_model)
        path = _local_path(source_uri) if source_uri else None
        if path is None or not path.is_dir():
            raise PermanentBackendError("deployment_source_missing", f"The model files of '{model}' are not at '{source_uri}'.")
        if (path / "adapter_config.json").is_file():
            return "adapter", self._base_server(base_model)
        if (path / "config.json").is_file():
            return "full", self._full_server(project, model, path)
        raise PermanentBackendError(
            "deployment_source_invalid", f"'{source_uri}' holds neither a LoRA adapter nor a Hugging Face model."
        )

    def _base_server(self, base_model: str) -> str:
        key = f"base:{base_model}"
        with self._state_lock:
            state = self._load()
            if key not in state["servers"]:
                state["servers"][key] = {"source": base_model, "served_name": base_model}
                self._save(state)
        return key

    def _full_server(self, project: str, model: str, path: Path) -> str:
        key = f"full:{project}:{model}"
        with self._state_lock:
            state = self._load()
            state["servers"][key] = {**state["servers"].get(key, {}), "source": str(path), "served_name": model}
            self._save(state)
        return key

    # -- processes -----------------------------------------------------------------------------

    def _ensure_server(self, server: str) -> str:
        with self._lock_for(server):
            info = self._server_info(server)
            if info is None:
                raise BackendUnavailable("deployment_unavailable", f"No inference process is configured for '{server}'.")
            url = f"http://127.0.0.1:{info.get('port')}"
            child = self._children.get(server)
            if server in self._ready and (child is None or child.poll() is None) and _pid_alive(info.get("pid")):
                return url
            if info.get("port") and self._healthy(info):  # adopt what a previous control plane started
                self._ready.add(server)
                self._register_all(server, url)
                return url
            if child is not None and child.poll() is None:
                self._terminate(child.pid, child)  # alive but not answering: replace it
            url = self._start(server, info)
            self._ready.add(server)
            self._register_all(server, url)
            return url

    def _start(self, server: str, info: dict[str, Any]) -> str:
        port = free_port()
        command = [
            self.python, "-m", "tuneplane_training.serving", "--base-model", info["source"],
            "--served-name", info["served_name"], "--host", "127.0.0.1", "--port", str(port),
            "--max-loaded-adapters", str(self.max_loaded_adapters),
        ]
        if self.device:
            command += ["--device", self.device]
        log_path = self.root / "logs" / f"{_safe(server)}.log"
        with open(log_path, "ab") as log_file:
            # Its own session: Ctrl-C or a kill -9 of the control plane does not take it down, and a
            # restarted control plane adopts it instead of loading the model again.
            child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        self._children[server] = child
        with self._state_lock:
            state = self._load()
            state["servers"][server] = {**info, "port": port, "pid": child.pid, "started_at": int(time.time())}
            self._save(state)
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            if child.poll() is not None:
                self._children.pop(server, None)
                raise PermanentBackendError(
                    "deployment_failed",
                    f"The inference process for '{info['served_name']}' exited with {child.returncode}: {_tail(log_path)}",
                )
            if self._healthy({**info, "port": port}):
                log.info("inference process for %s is up on %s (pid %s)", server, url, child.pid)
                return url
            time.sleep(0.25)
        self._terminate(child.pid, child)
        raise BackendUnavailable("deployment_timeout", f"The inference process for '{info['served_name']}' did not start in {self.startup_timeout:.0f}s.")

    def _healthy(self, info: dict[str, Any]) -> bool:
        if not info.get("port"):
            return False
        try:
            response = self._http.get(f"http://127.0.0.1:{info['port']}/health", timeout=2.0)
            return response.status_code == 200 and response.json().get("base_model") == info.get("served_name")
        except (httpx.HTTPError, ValueError):
            return False

    def _register_all(self, server: str, url: str) -> None:
        with self._state_lock:
            records = [r for r in self._load()["deployments"].values() if r["server"] == server and r["kind"] == "adapter"]
        for record in records:
            try:
                self._register_adapter(url, record["model"], record["source_uri"])
            except BackendError as exc:  # one broken adapter must not take the base down with it
                log.warning("re-registering %s failed: %s", record["model"], exc.message)
                self._set_status(record["project"], record["model"], "failed", {"code": exc.code, "message": exc.message})

    def _register_adapter(self, url: str, model: str, source_uri: str) -> None:
        path = str(_local_path(source_uri))
        try:
            response = self._http.post(f"{url}/adapters", json={"name": model, "path": path})
        except httpx.HTTPError as exc:
            raise BackendUnavailable("deployment_unavailable", f"The inference process at {url} did not answer: {exc}") from exc
        if response.status_code == 409:  # registered with another path (a new version): replace it
            self._http.delete(f"{url}/adapters/{model}")
            response = self._http.post(f"{url}/adapters", json={"name": model, "path": path})
        if response.status_code != 200:
            message = _error_message(response)
            raise PermanentBackendError("deployment_failed", f"The adapter '{model}' was refused: {message}")

    @staticmethod
    def _terminate(pid: int, child: subprocess.Popen | None) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (child.poll() is not None) if child else not _pid_alive(pid):
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if child:
            child.wait()

    # -- persisted state -----------------------------------------------------------------------

    @staticmethod
    def _key(project: str, model: str) -> str:
        return f"{project}\n{model}"

    def _lock_for(self, server: str) -> threading.Lock:
        with self._state_lock:
            return self._server_locks.setdefault(server, threading.Lock())

    def _server_info(self, server: str) -> dict[str, Any] | None:
        with self._state_lock:
            info = self._load()["servers"].get(server)
        return dict(info) if info else None

    def _set_status(self, project: str, model: str, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
        with self._state_lock:
            state = self._load()
            record = state["deployments"].get(self._key(project, model))
            if record is None:  # undeployed meanwhile
                return {"project": project, "model": model, "status": "deleted"}
            record.update(status=status, error=error)
            self._save(state)
            return dict(record)

    def _render(self, record: dict[str, Any]) -> dict[str, Any]:
        info = self._server_info(record.get("server", "")) or {}
        return {
            "object": "deployment", "id": record["model"], "model": record["model"],
            "base_model": record.get("base_model"), "kind": record.get("kind"), "status": record["status"],
            "created_at": record.get("created_at"), "error": record.get("error"),
            "endpoint": f"http://127.0.0.1:{info['port']}" if info.get("port") else None,
        }

    def _load(self) -> dict[str, Any]:
        path = self.root / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return {"servers": {}, "deployments": {}}
        state.setdefault("servers", {})
        state.setdefault("deployments", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        path = self.root / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:150]


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return "(no log)"


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"
