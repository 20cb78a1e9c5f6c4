"""The shape of one chat message in an OpenAI fine-tuning example, and the error and tally types
that ``training_example`` and ``training_file`` share.

Accepted shapes follow OpenAI's fine-tuning message schemas, including the deprecated
``function_call`` and ``function`` role, because an OpenAI-valid file should upload here unchanged.
Image, audio and file content is OpenAI-valid but refused with ``unsupported_feature``: the trainer
is text-only. Error codes are documented in ``training_file``.
"""

from __future__ import annotations

import re
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# Keys OpenAI's message schemas define, per role. Anything else is an unknown field.
_MESSAGE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(
        {"role", "content", "refusal", "name", "tool_calls", "function_call", "weight", "audio"}
    ),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
# Content-part types each role may use in OpenAI's schema; only text and refusal are trainable.
_PART_TYPES: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
_UNSUPPORTED_PARTS = frozenset({"image_url", "input_audio", "file"})
# OpenAI's rule for function names (tools, tool calls, legacy functions).
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ExampleError(Exception):
    """One problem in one example; ``field`` is a JSON path such as ``messages[2].role``."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Tally:
    """What the examples seen so far contain, summed over the file."""

    __slots__ = (
        "message_count",
        "assistant_message_count",
        "trained_assistant_message_count",
        "text_chars",
        "has_tools",
        "has_weights",
        "has_legacy_functions",
    )

    def __init__(self) -> None:
        self.message_count = 0
        self.assistant_message_count = 0
        self.trained_assistant_message_count = 0
        self.text_chars = 0
        self.has_tools = False
        self.has_weights = False
        self.has_legacy_functions = False


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def show(value: Any) -> str:
    """A short rendering of a user's value for an error message: strings quoted, numbers as
    written, anything else by its JSON type; long strings are cut so a message stays one line."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return json_type(value)


def check_message(
    message: Any, path: str, issued: set[str], tally: Tally, *, dpo: bool, output: bool
) -> None:
    if not isinstance(message, dict):
        raise type_error("a message object", message, path)
    role = require(message, "role", path + ".")
    if not isinstance(role, str) or role not in _MESSAGE_KEYS:
        raise ExampleError(
            "invalid_role", f"{show(role)} is not one of {', '.join(ROLES)}", path + ".role"
        )
    if output and role not in ("assistant", "tool"):
        raise ExampleError(
            "invalid_role",
            f"'{role}' is not allowed in an output; use assistant or tool",
            path + ".role",
        )
    check_keys(message, _MESSAGE_KEYS[role], path + ".")
    if "name" in message:
        check_string(message["name"], path + ".name", non_empty=True)
    if role == "assistant":
        _check_assistant(message, path, issued, tally, dpo=dpo, output=output)
        return
    if role == "tool":
        call_id = require(message, "tool_call_id", path + ".")
        check_string(call_id, path + ".tool_call_id", non_empty=True)
        if call_id not in issued:
            raise ExampleError(
                "invalid_tool_call_id",
                f"{show(call_id)} does not match the id of any earlier assistant tool call",
                path + ".tool_call_id",
            )
    if role == "function":
        tally.has_legacy_functions = True
        require(message, "name", path + ".")
    content = require(message, "content", path + ".")
    if content is None and role == "function":
        return
    tally.text_chars += _check_content(content, role, path + ".content")


def _check_assistant(
    message: dict[str, Any], path: str, issued: set[str], tally: Tally, *, dpo: bool, output: bool
) -> None:
    tally.assistant_message_count += 1
    if "audio" in message:
        raise ExampleError(
            "unsupported_feature",
            "audio responses are not supported: the trainer is text-only",
            path + ".audio",
        )
    if "weight" in message:
        weight = message["weight"]
        if dpo:
            raise ExampleError(
                "invalid_weight",
                "weight is only allowed in chat (supervised) examples",
                path + ".weight",
            )
        # bool is an int in Python, but JSON true is not the number 1.
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
            raise ExampleError(
                "invalid_weight", f"weight must be 0 or 1, got {show(weight)}", path + ".weight"
            )
        tally.has_weights = True
    acts = False
    if "tool_calls" in message:
        _check_tool_calls(message["tool_calls"], path + ".tool_calls", issued, tally)
        acts = True
    if "function_call" in message:
        tally.has_legacy_functions = True
        _check_function_call(message["function_call"], path + ".function_call", tally)
        acts = True
    if message.get("refusal") is not None:
        tally.text_chars += len(check_string(message["refusal"], path + ".refusal"))
        acts = True
    content = message.get("content")
    if content is None:
        if not acts:
            raise ExampleError(
                "missing_field" if "content" not in message else "invalid_content",
                "an assistant message needs content unless it has tool_calls or function_call",
                path + ".content",
            )
        return
    chars = _check_content(content, "assistant", path + ".content")
    if output and chars == 0 and not acts:
        raise ExampleError(
            "invalid_content", "an output's assistant message must not be empty", path + ".content"
        )
    tally.text_chars += chars


def _check_content(content: Any, role: str, path: str) -> int:
    """A string or a non-empty list of text parts; returns the number of characters of text."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise type_error("a string or an array of content parts", content, path)
    if not content:
        raise ExampleError("invalid_content", "an array of content parts must not be empty", path)
    chars = 0
    allowed = _PART_TYPES[role]
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        if not isinstance(part, dict):
            raise type_error("a content part object", part, part_path)
        kind = require(part, "type", part_path + ".")
        if not isinstance(kind, str):
            raise type_error("a string", kind, part_path + ".type")
        if kind in _UNSUPPORTED_PARTS and kind in allowed:
            raise ExampleError(
                "unsupported_feature",
                f"'{kind}' content is not supported: the trainer is text-only",
                part_path + ".type",
            )
        if kind not in allowed or kind in _UNSUPPORTED_PARTS:
            supported = " or ".join(t for t in allowed if t not in _UNSUPPORTED_PARTS)
            raise ExampleError(
                "invalid_content",
                f"{show(kind)} is not a content part type of {role} messages; use {supported}",
                part_path + ".type",
            )
        check_keys(part, frozenset({"type", kind}), part_path + ".")
        text = require(part, kind, part_path + ".")
        chars += len(check_string(text, f"{part_path}.{kind}"))
    return chars


def _check_tool_calls(calls: Any, path: str, issued: set[str], tally: Tally) -> None:
    if not isinstance(calls, list):
        raise type_error("an array of tool calls", calls, path)
    if not calls:
        raise ExampleError(
            "invalid_value", "tool_calls must not be empty; leave it out instead", path
        )
    for index, call in enumerate(calls):
        call_path = f"{path}[{index}]"
        if not isinstance(call, dict):
            raise type_error("a tool call object", call, call_path)
        check_keys(call, frozenset({"id", "type", "function"}), call_path + ".")
        call_id = check_string(
            require(call, "id", call_path + "."), call_path + ".id", non_empty=True
        )
        kind = require(call, "type", call_path + ".")
        if kind != "function":
            raise ExampleError(
                "invalid_value", f"{show(kind)} is not 'function'", call_path + ".type"
            )
        _check_function_call(
            require(call, "function", call_path + "."), call_path + ".function", tally
        )
        issued.add(call_id)


def _check_function_call(call: Any, path: str, tally: Tally) -> None:
    if not isinstance(call, dict):
        raise type_error("an object", call, path)
    check_keys(call, frozenset({"name", "arguments"}), path + ".")
    check_function_name(require(call, "name", path + "."), path + ".name")
    # OpenAI's wire type is a JSON-encoded string; an object here is the most common mistake.
    arguments = check_string(require(call, "arguments", path + "."), path + ".arguments")
    tally.text_chars += len(arguments)


def check_function_name(name: Any, path: str) -> str:
    check_string(name, path)
    if not _FUNCTION_NAME.fullmatch(name):
        raise ExampleError(
            "invalid_value",
            f"{show(name)} is not 1 to 64 characters of letters, digits, '_' or '-'",
            path,
        )
    return name


def check_keys(obj: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ExampleError(
                "unknown_field",
                f"unknown field {show(key)}; allowed here: {', '.join(sorted(allowed))}",
                prefix + (key if len(key) <= 64 else key[:64] + "…"),
            )


def require(obj: dict[str, Any], key: str, prefix: str) -> Any:
    if key not in obj:
        raise ExampleError("missing_field", f"required field '{key}' is missing", prefix + key)
    return obj[key]


def check_string(value: Any, path: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise type_error("a string", value, path)
    if non_empty and not value:
        raise ExampleError("invalid_value", "must not be empty", path)
    return value


def type_error(expected: str, value: Any, path: str) -> ExampleError:
    return ExampleError("invalid_type", f"expected {expected}, got {json_type(value)}", path)
