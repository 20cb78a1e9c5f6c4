"""The scoring core: one base model in memory, many LoRA adapters on demand, OpenAI chat answers.

The local inference server and the Azure ML online deployment (``score.py``) both run this class,
so a fine-tuned model answers the same way on a laptop and in Azure.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError

from tuneplane_training.serving.adapters import AdapterPool, check_adapter_dir
from tuneplane_training.serving.chat_request import ChatRequest, parse_chat_request
from tuneplane_training.serving.errors import AdapterConflict, InvalidRequest, ServingError
from tuneplane_training.serving.generation import Completion, generate_completion

_DONE = object()
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
)


@dataclass(frozen=True)
class PreparedChat:
    """A validated request with its prompt already tokenized: nothing left that can be the caller's fault."""

    request: ChatRequest
    prompt: dict[str, torch.Tensor]
    max_new_tokens: int


class ChunkStream:
    """An iterator of stream chunks fed by the generation thread.

    ``close()`` only sets a flag, so any thread may call it, even while another thread waits in
    ``next()`` (the server's reader does, when a client disconnects mid-stream).
    """

    def __init__(self, request: ChatRequest, chunks: queue.Queue, cancelled: threading.Event) -> None:
        self._request = request
        self._chunks = chunks
        self._cancelled = cancelled
        self._head = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                      "model": request.model, "system_fingerprint": None}
        self._pending = collections.deque([self._chunk([_choice({"role": "assistant", "content": ""})])])
        self._finished = False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._pending:
            if self._finished:
                raise StopIteration
            item = self._chunks.get()
            if item is _DONE:
                self._finished = True
            elif isinstance(item, BaseException):
                self._finished = True
                raise item
            elif isinstance(item, Completion):
                self._pending.append(self._chunk([_choice({}, item.finish_reason)]))
                if self._request.include_usage:
                    self._pending.append(self._chunk([], usage=_usage(item)))
            else:
                self._pending.append(self._chunk([_choice({"content": item})]))
        return self._pending.popleft()

    def close(self) -> None:
        self._cancelled.set()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {**self._head, "choices": choices, **extra}


class ScoringCore:
    """One base model (a catalog name, a folder, or a full fine-tuned model served as its own base)
    answering chat completions for itself, under ``served_name``, and for every registered adapter.

    ``register_adapter`` loads at once, so a bad folder is a 400 at registration; at most
    ``max_loaded_adapters`` stay in memory and an evicted one is reloaded on its next request.
    Requests are served one at a time: the model has one active adapter.
    """

    def __init__(
        self,
        base_model: str,
        *,
        served_name: str | None = None,
        max_loaded_adapters: int = 8,
        default_max_tokens: int = 512,
        device: str | None = None,
        dtype: str = "auto",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuneplane_training.catalog import resolve_base_model

        path = resolve_base_model(base_model)
        self.base_name = served_name or base_model
        self.base_path = path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.default_max_tokens = default_max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_dtype(dtype, self.device))
        self.model = model.to(self.device).eval()
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._adapters = AdapterPool(self.model, max_loaded=max_loaded_adapters)
        # One model, one active adapter: generation and adapter changes take turns.
        self._lock = threading.Lock()

    # -- adapters ------------------------------------------------------------------------------

    def register_adapter(self, name: Any, path: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise InvalidRequest("name: a non-empty string of at most 256 characters is required.", param="name")
        if not isinstance(path, str) or not path:
            raise InvalidRequest("path: a folder path is required.", param="path")
        folder = Path(path).expanduser().resolve()
        if name == self.base_name:
            raise AdapterConflict(f"name: {name!r} is the base model's own name.", param="name")
        check_adapter_dir(folder)
        tokenizer = self._tokenizer_for(folder)
        with self._lock:
            if name in self._adapters:
                existing = self._adapters.get(name)
                if existing.path == folder:
                    return existing.describe()  # registering the same thing twice is a no-op
                raise AdapterConflict(
                    f"name: {name!r} is already registered with {existing.path}; delete it first.", param="name"
                )
            return self._adapters.register(name, folder, tokenizer).describe()

    def unregister_adapter(self, name: str) -> bool:
        with self._lock:
            return self._adapters.unregister(name)

    # Reads take no lock: they must answer while a long generation holds it, and copying the
    # registry's dict is atomic under the GIL.
    def adapters(self) -> list[dict[str, Any]]:
        return [adapter.describe() for adapter in self._adapters.list()]

    def model_names(self) -> list[str]:
        return [self.base_name, *(adapter.name for adapter in self._adapters.list())]

    # -- chat ----------------------------------------------------------------------------------

    def prepare(self, body: Any, *, default_model: str | None = None) -> PreparedChat:
        request = parse_chat_request(body, default_model=default_model)
        tokenizer = self._tokenizer_of(request.model)
        if tokenizer.chat_template is None:
            raise InvalidRequest(f"model: {request.model!r} has no chat template.", param="model")
        try:
            prompt = tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        except TemplateError as exc:  # e.g. a template that insists on alternating user/assistant turns
            raise InvalidRequest(f"messages: the model's chat template rejects them: {exc}", param="messages") from exc
        prompt = {key: prompt[key].to(self.device) for key in ("input_ids", "attention_mask")}
        return PreparedChat(request, prompt, self._max_new_tokens(request, prompt["input_ids"].shape[1]))

    def complete(self, prepared: PreparedChat) -> dict[str, Any]:
        completion = self._generate(prepared)
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prepared.request.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": _usage(completion),
        }

    def stream(self, prepared: PreparedChat) -> ChunkStream:
        """``chat.completion.chunk`` objects as the text grows; ``close()`` stops the generation."""
        chunks: queue.Queue = queue.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                chunks.put(self._generate(prepared, on_delta=chunks.put, cancelled=cancelled))
            except BaseException as exc:  # handed to the reader, which re-raises it
                chunks.put(exc)
            finally:
                chunks.put(_DONE)

        stream = ChunkStream(prepared.request, chunks, cancelled)
        threading.Thread(target=work, name="tuneplane-generate", daemon=True).start()
        return stream

    def chat(self, body: Any, *, default_model: str | None = None) -> dict[str, Any]:
        return self.complete(self.prepare(body, default_model=default_model))

    # -- internals -----------------------------------------------------------------------------

    def _generate(self, prepared: PreparedChat, **streaming: Any) -> Completion:
        name = prepared.request.model
        with self._lock:
            if name == self.base_name:
                with self._adapters.base() as model:
                    return generate_completion(
                        model, self.tokenizer, prepared.prompt, prepared.request,
                        max_new_tokens=prepared.max_new_tokens, **streaming,
                    )
            model = self._adapters.activate(name)
            tokenizer = self._adapters.get(name).tokenizer
            return generate_completion(
                model, tokenizer, prepared.prompt, prepared.request,
                max_new_tokens=prepared.max_new_tokens, **streaming,
            )

    def _tokenizer_of(self, name: str):
        if name == self.base_name:
            return self.tokenizer
        return self._adapters.get(name).tokenizer

    def _tokenizer_for(self, folder: Path):
        """The adapter's own saved tokenizer when it differs from the base's (a trainer may have
        added a chat template); the base tokenizer otherwise, so adapters share one copy."""
        if not (folder / "tokenizer_config.json").is_file() or _same_files(folder, self.base_path, _TOKENIZER_FILES):
            return self.tokenizer  # byte-identical files: skip a load that costs about a second
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(str(folder))
        if own.chat_template == self.tokenizer.chat_template and own.get_vocab() == self.tokenizer.get_vocab():
            return self.tokenizer
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(own) > rows:
            raise InvalidRequest(
                f"path: the tokenizer in {folder} has {len(own)} tokens but the base model has {rows} embeddings.",
                param="path",
            )
        return own

    def _max_new_tokens(self, request: ChatRequest, prompt_tokens: int) -> int:
        if self.context_length is None:
            return request.max_tokens or self.default_max_tokens
        room = self.context_length - prompt_tokens
        if room < 1 or (request.max_tokens is not None and request.max_tokens > room):
            asked = request.max_tokens or 1
            raise InvalidRequest(
                f"messages: this model's maximum context length is {self.context_length} tokens, but the "
                f"messages take {prompt_tokens} and {asked} more were requested.",
                param="messages",
                code="context_length_exceeded",
            )
        return request.max_tokens or min(self.default_max_tokens, room)


def _same_files(left: Path, right: Path, names: tuple[str, ...]) -> bool:
    for name in names:
        a, b = left / name, right / name
        if a.is_file() != b.is_file():
            return False
        if a.is_file() and (a.stat().st_size != b.stat().st_size or a.read_bytes() != b.read_bytes()):
            return False
    return True


def _dtype(name: str, device: torch.device):
    if name == "auto":
        # bfloat16 matmuls are slow on most CPUs; float32 is the fast and exact choice there.
        return torch.float32 if device.type == "cpu" else "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ServingError(f"dtype: unknown torch dtype {name!r}") from None


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
