"""The chat-completions request: validated once, before any generation starts.

Every rejection names the offending field (``param``) so a caller sees exactly what to fix, and a
streaming request fails with a 4xx before the first byte is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneplane_training.serving.errors import InvalidRequest

_ROLES = {"system", "developer", "user", "assistant"}
_MAX_STOP = 4
# Fields a generative model cannot honour faithfully here: refuse them instead of ignoring them.
_UNSUPPORTED_WHEN_SET = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "top_logprobs", "audio")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool

    @property
    def greedy(self) -> bool:
        # temperature 0 is OpenAI's "deterministic" setting; top_p 0 keeps only the top token.
        return self.temperature == 0 or self.top_p == 0


def parse_chat_request(body: Any, *, default_model: str | None = None) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        model = default_model
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: a non-empty string is required.", param="model")
    _refuse_unsupported(body)
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        max_tokens=_max_tokens(body),
        temperature=_number(body, "temperature", default=1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", default=1.0, low=0.0, high=1.0),
        stop=_stop(body.get("stop")),
        seed=_optional_int(body, "seed"),
        stream=_stream(body),
        include_usage=_include_usage(body),
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise InvalidRequest(f"n: only n=1 is supported, got {n!r}.", param="n", code="unsupported_value")
    if body.get("logprobs"):
        raise InvalidRequest("logprobs: log probabilities are not supported.", param="logprobs", code="unsupported_parameter")
    for field in ("presence_penalty", "frequency_penalty"):
        value = body.get(field)
        if value not in (None, 0, 0.0):
            raise InvalidRequest(f"{field}: only 0 is supported, got {value!r}.", param=field, code="unsupported_value")
    for field in _UNSUPPORTED_WHEN_SET:
        if body.get(field):
            raise InvalidRequest(f"{field}: not supported by this deployment.", param=field, code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise InvalidRequest(
            "response_format: only {'type': 'text'} is supported.", param="response_format", code="unsupported_value"
        )


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages: a non-empty array of messages is required.", param="messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: must be an object with 'role' and 'content'.", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"{where}.role: must be one of {', '.join(sorted(_ROLES))}, got {role!r}.", param=f"{where}.role"
            )
        # Chat templates know "system"; "developer" is OpenAI's newer name for the same thing.
        messages.append({"role": "system" if role == "developer" else role, "content": _content(message, where)})
    return messages


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"{where}.content[{index}]: only text parts ({{'type': 'text', 'text': ...}}) are supported.",
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"{where}.content: must be a string or an array of text parts.", param=f"{where}.content")


def _max_tokens(body: dict[str, Any]) -> int | None:
    # max_completion_tokens is the newer name; the older max_tokens still works everywhere.
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise InvalidRequest(f"{field}: must be an integer >= 1, got {value!r}.", param=field)
        return value
    return None


def _number(body: dict[str, Any], field: str, *, default: float, low: float, high: float) -> float:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{field}: must be a number, got {value!r}.", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"{field}: must be between {low:g} and {high:g}, got {value!r}.", param=field)
    return float(value)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("stop: must be a string or an array of strings.", param="stop")
    if len(stops) > _MAX_STOP:
        raise InvalidRequest(f"stop: at most {_MAX_STOP} sequences are allowed, got {len(stops)}.", param="stop")
    if any(not s for s in stops):
        raise InvalidRequest("stop: sequences must not be empty.", param="stop")
    return tuple(stops)


def _optional_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidRequest(f"{field}: must be an integer, got {value!r}.", param=field)
    return value


def _stream(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"stream: must be a boolean, got {value!r}.", param="stream")
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options: must be an object.", param="stream_options")
    if not body.get("stream"):
        raise InvalidRequest("stream_options: only allowed when stream is true.", param="stream_options")
    value = options.get("include_usage", False)
    if not isinstance(value, bool):
        raise InvalidRequest("stream_options.include_usage: must be a boolean.", param="stream_options.include_usage")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
