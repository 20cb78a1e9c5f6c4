"""Training data: read OpenAI chat / preference JSONL, render with the model's own chat template, and
mark which tokens carry loss.

Assistant spans are found without ``{% generation %}`` markers: each conversation prefix is rendered
and the character offsets where the rendering grows tell which text a message produced. Tokens whose
characters fall inside a trainable assistant message (``weight`` absent or 1) get labels; everything
else gets -100. The template's end-of-turn token is part of the assistant's span, so the model learns
to stop. Supervised tokens are counted after the one-position shift the loss applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
_ROLES = {"system", "user", "assistant", "tool", "developer"}


class DataError(ValueError):
    """The training or validation file is invalid; the message names the file and line (exit code 2)."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass
class PreferencePair:
    chosen: Example
    rejected: Example
    line: int


@dataclass
class LoadReport:
    truncated: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what} line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{what} line {number}: each line must be a JSON object")
            rows.append((number, row))
    if not rows:
        raise DataError(f"{what}: the file has no examples")
    return rows


def _check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{index}] must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise DataError(f"{where}: messages[{index}].role must be one of {sorted(_ROLES)}, got {role!r}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise DataError(f"{where}: messages[{index}].content must be a string")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise DataError(f"{where}: messages[{index}].content is missing")
        weight = message.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise DataError(f"{where}: messages[{index}].weight must be 0 or 1")
        if "weight" in message and role != "assistant":
            raise DataError(f"{where}: messages[{index}].weight is only allowed on assistant messages")
    return messages


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template and builds labels."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("base_model: a fast tokenizer (with offset mapping) is required")
        if not tokenizer.chat_template:
            raise DataError("base_model: the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self._template_knows_tool_calls = "tool_calls" in tokenizer.chat_template

    def _normalise(self, message: dict[str, Any]) -> dict[str, Any]:
        message = {k: v for k, v in message.items() if k != "weight"}
        if message["role"] == "developer":
            message["role"] = "system"
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            message["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if message.get("tool_calls") and not self._template_knows_tool_calls:
            # The template cannot show tool calls, so the call is written into the text the
            # model must learn to produce.
            calls = [c.get("function", c) for c in message["tool_calls"]]
            text = message.get("content") or ""
            message["content"] = (text + "\n" if text else "") + json.dumps(calls, ensure_ascii=False)
            del message["tool_calls"]
        if message.get("content") is None:
            message["content"] = ""
        return message

    def _render(self, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool = False) -> str:
        kwargs = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )

    def spans(self, messages: list[dict[str, Any]], tools: Any, trainable: list[bool]) -> tuple[str, list[tuple[int, int]]]:
        """Full rendering and the character spans of trainable assistant messages."""
        normal = [self._normalise(m) for m in messages]
        full = self._render(normal, tools)
        spans: list[tuple[int, int]] = []
        for index, message in enumerate(normal):
            upto = self._render(normal[: index + 1], tools)
            if message["role"] == "assistant" and trainable[index]:
                # The header (e.g. "<|im_start|>assistant\n") is the generation prompt: not learned.
                start_text = self._render(normal[:index], tools, generation_prompt=True) if index else ""
                if not (full.startswith(upto) and upto.startswith(start_text)):
                    raise DataError(
                        "base_model: the chat template does not render conversation prefixes stably, "
                        "so assistant turns cannot be located"
                    )
                end = len(upto.rstrip())  # trailing newline after the end-of-turn token is not learned
                spans.append((len(start_text), end))
        return full, spans

    def encode(self, messages: list[dict[str, Any]], tools: Any, trainable: list[bool], line: int) -> Example:
        text, spans = self.spans(messages, tools, trainable)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        labels = [IGNORE] * len(ids)
        span_index = 0
        for position, (start, end) in enumerate(encoded["offset_mapping"]):
            while span_index < len(spans) and start >= spans[span_index][1]:
                span_index += 1
            if span_index == len(spans):
                break
            span_start, span_end = spans[span_index]
            if end > start and span_start <= start < span_end:
                labels[position] = ids[position]
        labels[0] = IGNORE  # the first token is never predicted
        return Example(ids, labels, line)


def _fit(example: Example, max_len: int, policy: str, report: LoadReport) -> Example | None:
    if len(example.input_ids) <= max_len:
        return example
    if policy == "drop":
        report.dropped.append(example.line)
        return None
    cut = Example(example.input_ids[:max_len], example.labels[:max_len], example.line)
    if cut.supervised_tokens == 0:  # nothing left to learn from
        report.dropped.append(example.line)
        return None
    report.truncated.append(example.line)
    return cut


def load_chat_examples(path: str | Path, renderer: ChatRenderer, max_len: int, policy: str, what: str) -> tuple[list[Example], LoadReport]:
    report = LoadReport()
    examples: list[Example] = []
    for line, row in read_jsonl(path, what):
        where = f"{what} line {line}"
        messages = _check_messages(row.get("messages"), where)
        trainable = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages]
        if not any(trainable):
            raise DataError(f"{where}: no assistant message with weight 1 to learn from")
        try:
            example = renderer.encode(messages, row.get("tools"), trainable, line)
        except DataError:
            raise
        except Exception as exc:  # template errors (jinja) name the line, not a traceback
            raise DataError(f"{where}: the chat template cannot render it ({exc})") from exc
        fitted = _fit(example, max_len, policy, report)
        if fitted is not None:
            examples.append(fitted)
    if not examples:
        raise DataError(f"{what}: every example is longer than max_seq_length and was dropped")
    return examples, report


def load_preference_pairs(path: str | Path, renderer: ChatRenderer, max_len: int, policy: str, what: str) -> tuple[list[PreferencePair], LoadReport]:
    """OpenAI DPO format: {"input": {"messages": [...], "tools"?}, "preferred_output": [msg],
    "non_preferred_output": [msg]}; only the final assistant message carries loss."""
    report = LoadReport()
    pairs: list[PreferencePair] = []
    for line, row in read_jsonl(path, what):
        where = f"{what} line {line}"
        prompt = row.get("input")
        if not isinstance(prompt, dict):
            raise DataError(f"{where}: input must be an object with messages")
        messages = _check_messages(prompt.get("messages"), f"{where}: input")
        sides = []
        for key in ("preferred_output", "non_preferred_output"):
            output = row.get(key)
            if not (isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict)
                    and output[0].get("role") == "assistant"):
                raise DataError(f"{where}: {key} must be a list holding one assistant message")
            _check_messages(output, f"{where}: {key}")
            conversation = [{k: v for k, v in m.items() if k != "weight"} for m in messages] + output
            trainable = [False] * len(messages) + [True]
            try:
                sides.append(renderer.encode(conversation, prompt.get("tools"), trainable, line))
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"{where}: the chat template cannot render it ({exc})") from exc
        chosen = _fit(sides[0], max_len, policy, report)
        rejected = _fit(sides[1], max_len, policy, LoadReport())
        if chosen is None or rejected is None:
            if line not in report.dropped:
                report.dropped.append(line)
            continue
        pairs.append(PreferencePair(chosen, rejected, line))
    if not pairs:
        raise DataError(f"{what}: every pair is longer than max_seq_length and was dropped")
    return pairs, report
