"""Azure ML online deployment entry: ``init()`` once per worker, ``run(raw_request)`` per request.

It runs the same scoring core as the local inference server. The deployment's model folder
(``AZUREML_MODEL_DIR``, or its single sub-folder, which is where Azure ML mounts a registered
model) holds either a LoRA adapter or a full fine-tuned model in Hugging Face layout.

Environment:
- ``AZUREML_MODEL_DIR`` (set by Azure ML): the model folder.
- ``TUNEPLANE_MODEL_NAME``: the name callers use in ``model``; default: the folder's name.
- ``TUNEPLANE_BASE_MODEL``: the base for an adapter (catalog name, folder or Hugging Face id);
  default: ``base_model_name_or_path`` from adapter_config.json.
- ``TUNEPLANE_ADAPTERS``: optional JSON object ``{name: path}`` of more adapters on the same base
  (paths relative to the model folder), so one deployment serves many fine-tuned models.
- ``TUNEPLANE_MAX_LOADED_ADAPTERS``, ``TUNEPLANE_MAX_TOKENS``: as the local server's options.

``run`` answers whole ``chat.completion`` objects; ``stream: true`` is refused with a 400,
because the Azure ML HTTP server sends one response per call (the control plane streams).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tuneplane_training.serving.core import ScoringCore
from tuneplane_training.serving.errors import InvalidRequest, ServingError

_core: ScoringCore | None = None
_model_name: str | None = None


def init() -> None:
    global _core, _model_name
    _core, _model_name = load_deployment(os.environ)


def run(raw_request: Any) -> Any:
    status, payload = handle(raw_request)
    try:  # present inside Azure ML's inference server, which turns it into the HTTP status
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        return payload
    return AMLResponse(payload, status, json_str=True)


def handle(raw_request: Any) -> tuple[int, dict[str, Any]]:
    """``(http_status, body)`` for one request; errors come back as the OpenAI error envelope."""
    if _core is None:
        return 503, ServingError("The deployment is not initialised; init() has not run.").envelope()
    try:
        body = _body(raw_request)
        if isinstance(body, dict) and body.get("stream"):
            raise InvalidRequest(
                "stream: this endpoint answers whole completions; call it without stream.", param="stream"
            )
        return 200, _core.chat(body, default_model=_model_name)
    except ServingError as exc:
        return exc.status, exc.envelope()


def load_deployment(environ: os._Environ | dict[str, str]) -> tuple[ScoringCore, str]:
    root_value = environ.get("AZUREML_MODEL_DIR")
    if not root_value:
        raise RuntimeError("AZUREML_MODEL_DIR is not set; Azure ML sets it to the deployment's model folder.")
    root = Path(root_value)
    folder = _model_folder(root)
    name = environ.get("TUNEPLANE_MODEL_NAME") or folder.name
    options = {
        "max_loaded_adapters": int(environ.get("TUNEPLANE_MAX_LOADED_ADAPTERS", "8")),
        "default_max_tokens": int(environ.get("TUNEPLANE_MAX_TOKENS", "512")),
    }
    if (folder / "adapter_config.json").is_file():
        config = json.loads((folder / "adapter_config.json").read_text())
        base = environ.get("TUNEPLANE_BASE_MODEL") or config.get("base_model_name_or_path")
        if not base:
            raise RuntimeError(f"{folder}/adapter_config.json names no base model; set TUNEPLANE_BASE_MODEL.")
        core = ScoringCore(base, **options)
        core.register_adapter(name, str(folder))
    else:
        core = ScoringCore(str(folder), served_name=name, **options)
    extra = json.loads(environ.get("TUNEPLANE_ADAPTERS") or "{}")
    if not isinstance(extra, dict):
        raise RuntimeError("TUNEPLANE_ADAPTERS must be a JSON object of {name: path}.")
    for extra_name, path in extra.items():
        core.register_adapter(extra_name, str(folder / path))
    return core, name


def _model_folder(root: Path) -> Path:
    def is_model(path: Path) -> bool:
        return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()

    if is_model(root):
        return root
    children = [child for child in sorted(root.iterdir()) if child.is_dir() and is_model(child)] if root.is_dir() else []
    if len(children) != 1:
        found = ", ".join(child.name for child in children) or "nothing"
        raise RuntimeError(
            f"{root} must hold one adapter or model (adapter_config.json or config.json); found {found}."
        )
    return children[0]


def _body(raw_request: Any) -> Any:
    if isinstance(raw_request, (dict, list)):
        return raw_request
    if hasattr(raw_request, "get_data"):  # a raw HTTP request object (@rawhttp)
        raw_request = raw_request.get_data()
    try:
        return json.loads(raw_request)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
