"""Streaming validation of an OpenAI fine-tuning file (JSONL) while it is uploaded.

Usage::

    validator = TrainingFileValidator(max_bytes=settings.max_upload_bytes)
    try:
        async for chunk in upload:          # any chunk sizes; a line or a character may be split
            validator.feed(chunk)            # raises at the first complete bad line
            destination.write(chunk)
        summary = validator.finish()         # checks the last line (no trailing newline needed)
    except TrainingFileError as err:
        # discard what was written; answer 400 with str(err), err.code, err.line, err.field
        ...
    record.format, record.example_count = summary.format, summary.example_count

Memory is bounded by ``max_line_bytes``: only the current partial line is kept. The validator is
pure (no I/O); one instance checks one file. After an error every later ``feed``/``finish`` raises
that same error again.

Rules (OpenAI's fine-tuning formats; ``training_example`` checks one example and
``training_message`` one message):

* UTF-8 only. A byte order mark is accepted at the very start of the file and nowhere else.
* Lines end with ``\\n`` or ``\\r\\n``; the last line may lack it. Each line is one JSON object
  (NaN and Infinity are not JSON and are refused).
* Blank (whitespace-only) lines are accepted only at the end of the file, where editors leave
  them. A blank line between examples is an error, because JSONL readers disagree on whether it
  is an empty record and the trainer must see exactly the examples counted here.
* All examples have one format, set by the first: chat ``{"messages": [...]}`` or DPO
  ``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``
  (``preferred_completion`` / ``non_preferred_completion`` are accepted aliases, not both forms).
* Roles: system, developer, user, assistant, tool, and the deprecated function. Content is a
  string or a non-empty list of text parts (assistants may also use refusal parts); an assistant
  may omit content when it has ``tool_calls`` or ``function_call``. A tool message must answer an
  earlier ``tool_calls`` id. Tool-call ``arguments`` must be a string, as on OpenAI's wire.
* Chat: at least one assistant message with ``weight`` 1 (the default); ``weight`` is 0 or 1 and
  only on assistant messages.
* DPO: the input must not end with an assistant message (the outputs are the reply to it). Each
  output is a non-empty list of assistant and tool messages that starts and ends with a non-empty
  assistant message; the two outputs must differ; ``weight`` is not allowed.
* Errors name the 1-based line and the JSON path of the field: ``str(err)`` reads
  ``line 7: messages[2].role: 'robot' is not one of system, developer, user, assistant, tool,
  function``. ``err.message`` is the part after the location.

Error codes (``TrainingFileError.code``), stable and part of the API:

=============================  ====================================================================
``invalid_encoding``           a line is not valid UTF-8, holds an unpaired surrogate escape, or a
                               byte order mark appears after the start of the file
``invalid_json``               a line is not one JSON value
``not_an_object``              a line is JSON but not an object
``unknown_format``             the first example has neither ``messages`` nor DPO fields
``mixed_formats``              an example's format differs from the first one's (or mixes both)
``unknown_field``              a key OpenAI's schema does not define at that place
``missing_field``              a required key is absent (or a required list is empty)
``invalid_type``               a value has the wrong JSON type
``invalid_value``              a value of the right type is out of its domain (e.g. a tool type)
``invalid_role``               a message role is unknown or not allowed at that place
``invalid_content``            malformed content (empty part list, wrong part type, empty output)
``unsupported_feature``        OpenAI-valid but not trainable here (image, audio, file content)
``invalid_tool_call_id``       a tool message answers no earlier assistant tool call
``missing_assistant_message``  a chat example has no assistant message with weight 1, or a DPO
                               output has no message
``invalid_weight``             ``weight`` not 0 or 1, or used outside a chat assistant message
``conflicting_fields``         a DPO output is given under both its name and its alias
``blank_line``                 a blank line before another example
``empty_file``                 no example at all
``file_too_large``             more than ``max_bytes`` bytes (``line`` is None)
``line_too_long``              a line longer than ``max_line_bytes`` bytes
=============================  ====================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneplane.domain.training_example import ExampleFormat, check_chat, check_dpo, classify
from tuneplane.domain.training_message import ExampleError, Tally, json_type

DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_FORMAT_KEY = {"chat": "messages", "dpo": "input"}


class TrainingFileError(ValueError):
    """Why a training file was refused: a stable ``code``, the 1-based ``line`` and the JSON path
    ``field`` of the problem (either may be None), and a human ``message``."""

    def __init__(
        self, code: str, message: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.line = line
        self.field = field
        where = "".join(
            part for part in (f"line {line}: " if line else "", f"{field}: " if field else "")
        )
        super().__init__(where + message)


@dataclass(frozen=True)
class TrainingFileSummary:
    """What a valid file holds; ``format`` and ``example_count`` go on the FileRecord."""

    format: ExampleFormat
    example_count: int
    total_bytes: int  # as uploaded, BOM and line endings included
    line_count: int  # lines including trailing blank ones
    max_line_bytes: int  # the longest line, without its line ending (or the BOM)
    message_count: int  # every message, DPO inputs and both outputs included
    assistant_message_count: int
    trained_assistant_message_count: int  # chat only: assistant messages whose weight is not 0
    text_chars: int  # characters of text content and tool-call arguments (≈ 4 per token)
    has_tools: bool  # some example defines a non-empty ``tools`` list
    has_weights: bool  # some assistant message sets ``weight``
    has_legacy_functions: bool  # ``functions``, ``function_call`` or the ``function`` role


class TrainingFileValidator:
    """Validates a JSONL fine-tuning file fed in chunks; see the module docstring."""

    def __init__(self, *, max_bytes: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_bytes < 1 or max_line_bytes < 1:
            raise ValueError("max_bytes and max_line_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self._partial = bytearray()
        self._total = 0
        self._line_no = 0  # lines completed so far
        self._longest = 0
        self._examples = 0
        self._format: ExampleFormat | None = None
        self._blank_line: int | None = None  # first blank line not yet followed by an example
        self._tally = Tally()
        self._error: TrainingFileError | None = None
        self._summary: TrainingFileSummary | None = None

    def feed(self, chunk: bytes) -> None:
        """Takes the next bytes of the file; raises TrainingFileError at the first bad line."""
        self._check_open()
        if isinstance(chunk, memoryview):
            chunk = chunk.tobytes()
        elif not isinstance(chunk, (bytes, bytearray)):
            raise TypeError(f"feed() takes bytes, not {type(chunk).__name__}")
        try:
            self._total += len(chunk)
            if self._total > self.max_bytes:
                raise TrainingFileError(
                    "file_too_large", f"the file is larger than the limit of {self.max_bytes} bytes"
                )
            view = memoryview(chunk)
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                # Refuse an overlong line before copying it, so memory stays bounded by the limit
                # even when the line has not ended yet.
                length = len(self._partial) + (len(chunk) if end < 0 else end) - start
                if length > self.max_line_bytes + self._slack():
                    raise self._too_long(self._line_no + 1)
                if end < 0:
                    self._partial += view[start:]
                    break
                if self._partial:
                    self._partial += view[start:end]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = chunk[start:end]
                self._line(line)
                start = end + 1
        except TrainingFileError as err:
            self._error = err
            raise

    def finish(self) -> TrainingFileSummary:
        """Checks the last line and the file as a whole; returns its summary."""
        if self._summary is not None:
            return self._summary
        self._check_open()
        try:
            if self._partial:
                line = bytes(self._partial)
                self._partial.clear()
                self._line(line)
            if self._format is None:
                raise TrainingFileError("empty_file", "the file holds no training examples")
        except TrainingFileError as err:
            self._error = err
            raise
        tally = self._tally
        self._summary = TrainingFileSummary(
            format=self._format,
            example_count=self._examples,
            total_bytes=self._total,
            line_count=self._line_no,
            max_line_bytes=self._longest,
            message_count=tally.message_count,
            assistant_message_count=tally.assistant_message_count,
            trained_assistant_message_count=tally.trained_assistant_message_count,
            text_chars=tally.text_chars,
            has_tools=tally.has_tools,
            has_weights=tally.has_weights,
            has_legacy_functions=tally.has_legacy_functions,
        )
        return self._summary

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._summary is not None:
            raise RuntimeError("finish() was already called; use a new validator for a new file")

    def _slack(self) -> int:
        """Bytes a line may carry beyond its limit: a CR before the LF, and the BOM on line 1."""
        return 1 + (len(_BOM) if self._line_no == 0 else 0)

    def _too_long(self, line_no: int) -> TrainingFileError:
        return TrainingFileError(
            "line_too_long",
            f"the line is longer than the limit of {self.max_line_bytes} bytes",
            line=line_no,
        )

    def _line(self, raw: bytes) -> None:
        """One complete line, without its LF."""
        self._line_no += 1
        line_no = self._line_no
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if len(raw) > self.max_line_bytes:
            raise self._too_long(line_no)
        self._longest = max(self._longest, len(raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TrainingFileError(
                "invalid_encoding",
                f"invalid UTF-8 at byte {err.start + 1} of the line; the file must be UTF-8",
                line=line_no,
            ) from None
        if not text.strip(" \t"):  # JSON whitespace; the line ending is already gone
            if self._blank_line is None:
                self._blank_line = line_no
            return
        if self._blank_line is not None:
            raise TrainingFileError(
                "blank_line",
                "blank line between examples; remove it (only trailing blank lines are allowed)",
                line=self._blank_line,
            )
        if text.lstrip().startswith("\ufeff"):
            raise TrainingFileError(
                "invalid_encoding",
                "a byte order mark is only allowed at the start of the file",
                line=line_no,
            )
        obj = _parse(text, line_no)
        try:
            self._check_example(obj)
        except ExampleError as err:
            raise TrainingFileError(err.code, err.message, line=line_no, field=err.field) from None
        self._examples += 1

    def _check_example(self, obj: dict[str, Any]) -> None:
        kind = classify(obj)
        if self._format is None:
            if kind is None:
                raise ExampleError(
                    "unknown_format",
                    "expected a chat example with 'messages' or a DPO example with 'input', "
                    "'preferred_output' and 'non_preferred_output'",
                )
            self._format = kind
        elif kind is None:
            key = _FORMAT_KEY[self._format]
            raise ExampleError("missing_field", f"required field '{key}' is missing", key)
        elif kind != self._format:
            raise ExampleError(
                "mixed_formats",
                f"this is a {kind} example but the file's first example is {self._format}; "
                "a file holds one format",
            )
        if kind == "chat":
            check_chat(obj, self._tally)
        else:
            check_dpo(obj, self._tally)


def _parse(text: str, line_no: int) -> dict[str, Any]:
    try:
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise TrainingFileError(
            "invalid_json", f"invalid JSON: {err.msg} (column {err.colno})", line=line_no
        ) from None
    except ValueError as err:  # NaN / Infinity
        raise TrainingFileError("invalid_json", f"invalid JSON: {err}", line=line_no) from None
    except RecursionError:
        raise TrainingFileError(
            "invalid_json", "invalid JSON: nested too deeply", line=line_no
        ) from None
    if not isinstance(obj, dict):
        raise TrainingFileError(
            "not_an_object", f"each line must be a JSON object, got {json_type(obj)}", line=line_no
        )
    # json accepts "\ud800" escapes that decode to unpaired surrogates, which are not text and
    # would fail later when the trainer encodes them; only lines with such an escape are walked.
    if "\\ud" in text or "\\uD" in text:
        path = _find_surrogate(obj, "")
        if path is not None:
            raise TrainingFileError(
                "invalid_encoding",
                "an escape decodes to an unpaired UTF-16 surrogate, which is not valid text",
                line=line_no,
                field=path or None,
            )
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# One decoder for all lines: json.loads(..., parse_constant=...) would build one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _find_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding an unpaired surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            # The path goes into the error message, which must itself be encodable text.
            safe_key = key.encode("utf-8", "backslashreplace").decode("utf-8")
            item_path = f"{path}.{safe_key}" if path else safe_key
            if safe_key != key:
                return item_path
            found = _find_surrogate(item, item_path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
