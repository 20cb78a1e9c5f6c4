"""The Function App loaded once per test process, as the Functions host loads it: ``functions/`` on
the path, ``import function_app``, ``app.get_functions()`` (the worker's indexing) once.

Settings come from the environment only while the control plane is built, then the environment is
put back, so other tests in the process never see this TUNEPLANE_HOME.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = ROOT / "functions"
API_KEY = "tp-function-app-test-key"


@dataclass
class LoadedApp:
    module: Any
    home: Path
    functions: dict[str, Any]  # name -> azure.functions Function
    bindings: dict[str, dict]  # name -> function.json as the worker reports it

    def user_function(self, name: str) -> Any:
        return self.functions[name].get_user_function()

    @property
    def state(self) -> Any:
        return self.module.control_plane.api.state

    def http(self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None,
             key: str | None = API_KEY) -> func.HttpResponse:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = func.HttpRequest(method, f"http://localhost{path}", headers=headers, body=body)
        return asyncio.run(self.user_function("http_app_func")(request, None))


_loaded: LoadedApp | None = None


def load() -> LoadedApp:
    global _loaded
    if _loaded is not None:
        return _loaded
    home = Path(tempfile.mkdtemp(prefix="tp-funcapp-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = {"TUNEPLANE_HOME": str(home), "TUNEPLANE_API_KEY": API_KEY, "TUNEPLANE_BACKEND": "local",
           "TUNEPLANE_INBOX_SCAN_SECONDS": "0", "TUNEPLANE_MIN_TRAINING_EXAMPLES": "10",
           # No background loop: passes run only when a test fires the timer, so no trainer starts unasked.
           "TUNEPLANE_RECONCILER": "false"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    if str(FUNCTIONS_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTIONS_DIR))
    try:
        module = importlib.import_module("function_app")
        module.control_plane.api  # build it now, while the environment is ours
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    functions = {f.get_function_name(): f for f in module.app.get_functions()}
    bindings = {name: json.loads(f.get_function_json()) for name, f in functions.items()}
    _loaded = LoadedApp(module=module, home=home, functions=functions, bindings=bindings)
    return _loaded
