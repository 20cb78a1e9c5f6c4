"""One chat completion on an already selected model: transformers ``generate`` with its KV cache,
plus incremental decoding for stop strings and streaming.

Stop strings are checked on decoded text, not tokens, because a stop string can start or end in
the middle of a token. The same tracker yields the streamed deltas, so the concatenated stream
always equals the non-streamed answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tuneplane_training.serving.chat_request import ChatRequest

_REPLACEMENT = "\ufffd"  # what decode shows for the first bytes of a multi-byte character


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class TextTracker(StoppingCriteria):
    """Decodes generated tokens as they arrive, ends generation at a stop string, and hands out
    only text that can no longer change: a trailing partial character, or a tail that could still
    grow into a stop string, is held back until the next token settles it."""

    def __init__(
        self,
        tokenizer,
        prompt_tokens: int,
        stop: tuple[str, ...],
        on_delta: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._prompt_tokens = prompt_tokens
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._on_delta = on_delta
        self._cancelled = cancelled
        self._emitted = 0
        self.text = ""
        self.hit_stop = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = self._update(input_ids[0, self._prompt_tokens :], final=False)
        if self._cancelled is not None and self._cancelled.is_set():
            done = True
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def finish(self, generated: torch.Tensor) -> None:
        if not self.hit_stop:
            self._update(generated, final=True)

    def _update(self, generated: torch.Tensor, *, final: bool) -> bool:
        text = self._tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        # A stop string can only be new if it overlaps the text not yet handed out.
        search_from = max(0, self._emitted - self._longest_stop + 1)
        cuts = [i for i in (text.find(s, search_from) for s in self._stop) if i >= 0]
        if cuts:
            self.hit_stop = True
            text = text[: min(cuts)]
            safe = len(text)
        elif final:
            safe = len(text)
        else:
            safe = len(text) - self._held_back(text)
        self.text = text
        if safe > self._emitted:
            if self._on_delta is not None:
                self._on_delta(text[self._emitted : safe])
            self._emitted = safe
        return self.hit_stop

    def _held_back(self, text: str) -> int:
        # An unfinished multi-byte character decodes as one trailing U+FFFD (at most 3 bytes are
        # pending); replacement characters before those are invalid bytes that stay invalid.
        pending = min(3, len(text) - len(text.rstrip(_REPLACEMENT)))
        settled = text[: len(text) - pending]
        # The settled tail may also be the start of a stop string that the next tokens complete.
        for size in range(min(self._longest_stop - 1, len(settled)), 0, -1):
            tail = settled[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return pending + size
        return pending


def generate_completion(
    model,
    tokenizer,
    prompt: dict[str, torch.Tensor],
    request: ChatRequest,
    *,
    max_new_tokens: int,
    on_delta: Callable[[str], None] | None = None,
    cancelled: threading.Event | None = None,
) -> Completion:
    """Generate one answer. The caller holds the model (and its active adapter) for the duration."""
    input_ids = prompt["input_ids"]
    prompt_tokens = input_ids.shape[1]
    eos_ids = _eos_ids(model, tokenizer)
    kwargs: dict = {
        "max_new_tokens": max_new_tokens,
        "do_sample": not request.greedy,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        "eos_token_id": eos_ids,
    }
    if not request.greedy:
        # OpenAI's sampling has no top-k; a model's generation_config default of 50 would change it.
        kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        if request.seed is not None:
            torch.manual_seed(request.seed)
    tracker = None
    if request.stop or on_delta is not None or cancelled is not None:
        tracker = TextTracker(tokenizer, prompt_tokens, request.stop, on_delta, cancelled)
        kwargs["stopping_criteria"] = StoppingCriteriaList([tracker])
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=prompt["attention_mask"], **kwargs)
    generated = output[0, prompt_tokens:]
    if tracker is not None:
        tracker.finish(generated)
        text, hit_stop = tracker.text, tracker.hit_stop
    else:
        text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hit_stop = False
    ended_on_eos = generated.numel() > 0 and int(generated[-1]) in eos_ids
    stopped = hit_stop or ended_on_eos or (cancelled is not None and cancelled.is_set())
    if not stopped and generated.numel() < max_new_tokens:
        stopped = True  # another criterion (the model's own) ended it before the length limit
    return Completion(
        text=text,
        finish_reason="stop" if stopped else "length",
        prompt_tokens=prompt_tokens,
        completion_tokens=int(generated.numel()),
    )


def _eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [*ids, tokenizer.eos_token_id]
    if not ids or ids[0] is None:
        raise ValueError("the model has no end-of-sequence token")
    return ids

