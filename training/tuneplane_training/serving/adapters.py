"""LoRA adapters on one shared base model: registered by name, loaded on demand, evicted least
recently used, so many fine-tuned models share one base in memory (multi-LoRA).

Not thread-safe on purpose: activating an adapter changes the model for everybody, so the scoring
core holds one lock around "activate, then generate".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneplane_training.serving.errors import InvalidRequest, ModelNotFound, ServingError

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Adapter:
    name: str  # the served model name, e.g. "ft:SmolLM2-135M-Instruct:acme:bot:ftjob-..."
    path: Path
    tokenizer: Any
    # peft keys adapters by module-dict names, which may not contain "."; served names often do.
    slot: str
    loaded: bool = False
    load_seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "loaded": self.loaded, "load_seconds": self.load_seconds}


def check_adapter_dir(path: Path, *, param: str = "path") -> dict[str, Any]:
    """The adapter_config.json of a PEFT LoRA folder, or a 400 that says what is wrong with it."""
    if not path.is_dir():
        raise InvalidRequest(f"{param}: {path} is not a folder.", param=param)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        if (path / "config.json").is_file():
            raise InvalidRequest(
                f"{param}: {path} holds a full model, not an adapter; serve it as its own base model.",
                param=param,
                code="full_model",
            )
        raise InvalidRequest(f"{param}: {path} has no adapter_config.json.", param=param)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{param}: {config_file} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise InvalidRequest(f"{param}: only LoRA adapters are served, {config_file} says {found!r}.", param=param)
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise InvalidRequest(f"{param}: {path} has no {' or '.join(_WEIGHT_FILES)}.", param=param)
    return config


class AdapterPool:
    def __init__(self, base_model, *, max_loaded: int) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self._base = base_model
        self._peft = None  # the PeftModel wrapping the base, created by the first load
        self._max_loaded = max_loaded
        self._adapters: dict[str, Adapter] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded adapter names, oldest first
        self._active: str | None = None
        self._slots = itertools.count()

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def get(self, name: str) -> Adapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise ModelNotFound(f"The model {name!r} does not exist or is not deployed here.") from None

    def list(self) -> list[Adapter]:
        return list(self._adapters.values())

    def register(self, name: str, path: Path, tokenizer: Any) -> Adapter:
        """Add and load the adapter now, so a bad folder fails at registration and not at first use."""
        adapter = Adapter(name=name, path=path, tokenizer=tokenizer, slot=f"adapter_{next(self._slots)}")
        self._adapters[name] = adapter
        try:
            self._load(adapter)
        except BaseException:
            del self._adapters[name]
            raise
        return adapter

    def unregister(self, name: str) -> bool:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            return False
        if adapter.loaded:
            self._unload(adapter)
        return True

    def activate(self, name: str):
        """The model with this adapter active, loaded first if it was evicted."""
        adapter = self.get(name)
        if not adapter.loaded:
            self._load(adapter)
        self._lru.move_to_end(name)
        if self._active != adapter.slot:
            self._peft.set_adapter(adapter.slot)
            self._active = adapter.slot
        # The LoRA layers live inside the transformers model itself; generating on it directly skips
        # the per-step wrapper PeftModelForCausalLM adds around prepare_inputs_for_generation.
        return self._peft.get_base_model()

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        """The base model's own answers, with every adapter bypassed."""
        if self._peft is None:
            yield self._base
            return
        with self._peft.disable_adapter():
            yield self._peft.get_base_model()

    def _load(self, adapter: Adapter) -> None:
        check_adapter_dir(adapter.path)
        while len(self._lru) >= self._max_loaded:
            self._unload(self._adapters[next(iter(self._lru))])
        started = time.perf_counter()
        try:
            if self._peft is None:
                self._peft = _wrap(self._base, adapter)
            result = self._peft.load_adapter(str(adapter.path), adapter_name=adapter.slot)
            # peft loads with strict=False; weights that land nowhere mean the adapter belongs elsewhere.
            unused = [k for k in (*result.missing_keys, *result.unexpected_keys) if "lora_" in k]
            if unused:
                raise ValueError(f"{len(unused)} adapter weights do not match, e.g. {unused[0]}")
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            self._forget_partial(adapter.slot)
            raise InvalidRequest(
                f"path: the adapter at {adapter.path} does not fit the base model: {exc}", param="path"
            ) from exc
        adapter.load_seconds = time.perf_counter() - started
        adapter.loaded = True
        self._lru[adapter.name] = None
        # peft leaves the active adapter unchanged (or empty) after a load; activate() sets it.
        self._active = _single_active(self._peft)

    def _unload(self, adapter: Adapter) -> None:
        self._peft.delete_adapter(adapter.slot)
        adapter.loaded = False
        self._lru.pop(adapter.name, None)
        self._active = _single_active(self._peft)

    def _forget_partial(self, slot: str) -> None:
        # A failed load_adapter can leave the slot half-injected; remove it so nothing is half-written.
        if self._peft is not None and slot in self._peft.peft_config:
            try:
                self._peft.delete_adapter(slot)
            except (ValueError, KeyError) as exc:
                raise ServingError(f"could not undo a failed adapter load: {exc}") from exc
        self._active = _single_active(self._peft) if self._peft is not None else None


def _wrap(base_model, adapter: Adapter):
    """The PeftModel around the base, holding the adapter's (not yet loaded) LoRA layers.

    It is kept even when every adapter is later evicted, so the base is wrapped exactly once.
    """
    from peft import LoraConfig, PeftModel

    config = LoraConfig.from_pretrained(str(adapter.path))
    config.inference_mode = True
    model = PeftModel(base_model, config, adapter_name=adapter.slot)
    model.eval()
    return model


def _single_active(peft_model) -> str | None:
    active = list(peft_model.active_adapters)
    return active[0] if len(active) == 1 else None
