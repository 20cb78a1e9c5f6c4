"""Checks one parsed line of a fine-tuning file against OpenAI's chat (supervised) and DPO formats.

``training_file`` frames the byte stream into lines, decodes and parses them, and reports errors
with their line number; this module knows only the shape of one example (``training_message``
knows one message). It raises :class:`ExampleError` (a code, a message and the JSON path of the
offending field) and adds what it saw to a :class:`Tally`. The codes are documented in
``training_file``'s module docstring.

The shapes follow OpenAI's ``FineTuneChatRequestInput`` and ``FineTunePreferenceRequestInput``.
"""

from __future__ import annotations

from typing import Any, Literal

from tuneplane.domain.training_message import (
    ExampleError,
    Tally,
    check_function_name,
    check_keys,
    check_message,
    check_string,
    require,
    show,
    type_error,
)

ExampleFormat = Literal["chat", "dpo"]

CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
DPO_KEYS = frozenset(
    {
        "input",
        "preferred_output",
        "non_preferred_output",
        "preferred_completion",
        "non_preferred_completion",
    }
)
_DPO_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_OUTPUT_ALIASES = (
    ("preferred_output", "preferred_completion"),
    ("non_preferred_output", "non_preferred_completion"),
)
_MAX_FUNCTIONS = 128


def classify(obj: dict[str, Any]) -> ExampleFormat | None:
    """``chat`` or ``dpo`` by the top-level keys, or None when the line has neither kind of key."""
    has_chat = "messages" in obj
    has_dpo = any(key in obj for key in DPO_KEYS)
    if has_chat and has_dpo:
        raise ExampleError(
            "mixed_formats",
            "an example has both chat ('messages') and DPO ('input', 'preferred_output', …) fields",
        )
    if has_chat:
        return "chat"
    if has_dpo:
        return "dpo"
    return None


def check_chat(obj: dict[str, Any], tally: Tally) -> None:
    """A supervised example: ``{"messages": [...]}`` with optional ``tools``,
    ``parallel_tool_calls`` and legacy ``functions``."""
    check_keys(obj, CHAT_KEYS, "")
    _check_context(obj, "", tally, allow_functions=True)
    messages = require(obj, "messages", "")
    _check_message_list(messages, "messages", tally, dpo=False)
    trained = 0
    for message in messages:
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            trained += 1
    if trained == 0:
        has_assistant = any(m["role"] == "assistant" for m in messages)
        raise ExampleError(
            "missing_assistant_message",
            "every assistant message has weight 0, so there is nothing to train on"
            if has_assistant
            else "the example has no assistant message to train on",
            "messages",
        )
    tally.trained_assistant_message_count += trained


def check_dpo(obj: dict[str, Any], tally: Tally) -> None:
    """A preference example: ``{"input": {"messages": [...]}, "preferred_output": [...],
    "non_preferred_output": [...]}``, the outputs also accepted as ``preferred_completion`` and
    ``non_preferred_completion``."""
    check_keys(obj, DPO_KEYS, "")
    for canonical, alias in _OUTPUT_ALIASES:
        if canonical in obj and alias in obj:
            raise ExampleError(
                "conflicting_fields",
                f"give either '{canonical}' or its alias '{alias}', not both",
                alias,
            )
    prompt = require(obj, "input", "")
    if not isinstance(prompt, dict):
        raise type_error("an object", prompt, "input")
    check_keys(prompt, _DPO_INPUT_KEYS, "input.")
    _check_context(prompt, "input.", tally, allow_functions=False)
    messages = require(prompt, "messages", "input.")
    call_ids = _check_message_list(messages, "input.messages", tally, dpo=True)
    last = len(messages) - 1
    if messages[last]["role"] == "assistant":
        # The two outputs are competing assistant replies to the input; an input that already ends
        # with the assistant's reply leaves them nothing to answer.
        raise ExampleError(
            "invalid_role",
            "the input must not end with an assistant message: the preferred and non-preferred "
            "outputs are the assistant's reply to it",
            f"input.messages[{last}].role",
        )
    outputs = []
    for canonical, alias in _OUTPUT_ALIASES:
        name = alias if alias in obj else canonical
        output = require(obj, name, "")
        _check_output(output, name, call_ids, tally)
        outputs.append(output)
    if outputs[0] == outputs[1]:
        raise ExampleError(
            "invalid_content",
            "the preferred and non-preferred outputs are identical, so there is no preference",
            _output_name(obj, 1),
        )


def _output_name(obj: dict[str, Any], index: int) -> str:
    canonical, alias = _OUTPUT_ALIASES[index]
    return alias if alias in obj else canonical


def _check_output(output: Any, path: str, call_ids: set[str], tally: Tally) -> None:
    if not isinstance(output, list):
        raise type_error("an array of messages", output, path)
    if not output:
        raise ExampleError(
            "missing_assistant_message", "must hold at least one assistant message", path
        )
    _check_message_list(output, path, tally, dpo=True, call_ids=set(call_ids), output=True)
    for end in (0, len(output) - 1):
        if output[end]["role"] != "assistant":
            which = "start" if end == 0 else "end"
            raise ExampleError(
                "invalid_role",
                f"an output must {which} with an assistant message",
                f"{path}[{end}].role",
            )


def _check_message_list(
    messages: Any,
    path: str,
    tally: Tally,
    *,
    dpo: bool,
    call_ids: set[str] | None = None,
    output: bool = False,
) -> set[str]:
    """Checks each message in order; returns the tool-call ids the assistant has issued so far."""
    if not isinstance(messages, list):
        raise type_error("an array of messages", messages, path)
    if not messages:
        raise ExampleError("missing_field", "must hold at least one message", path)
    issued = set() if call_ids is None else call_ids
    for index, message in enumerate(messages):
        check_message(message, f"{path}[{index}]", issued, tally, dpo=dpo, output=output)
    tally.message_count += len(messages)
    return issued


def _check_context(
    obj: dict[str, Any], prefix: str, tally: Tally, *, allow_functions: bool
) -> None:
    """The optional ``tools``, ``parallel_tool_calls`` and legacy ``functions`` of an example."""
    if "tools" in obj:
        tools = obj["tools"]
        path = prefix + "tools"
        if not isinstance(tools, list):
            raise type_error("an array of tools", tools, path)
        names: set[str] = set()
        for index, tool in enumerate(tools):
            tool_path = f"{path}[{index}]"
            if not isinstance(tool, dict):
                raise type_error("a tool object", tool, tool_path)
            check_keys(tool, frozenset({"type", "function"}), tool_path + ".")
            kind = require(tool, "type", tool_path + ".")
            if kind != "function":
                raise ExampleError(
                    "invalid_value", f"{show(kind)} is not 'function'", tool_path + ".type"
                )
            function = require(tool, "function", tool_path + ".")
            name = _check_function_definition(
                function, tool_path + ".function", strict_allowed=True
            )
            if name in names:
                raise ExampleError(
                    "invalid_value",
                    f"tool {show(name)} is defined twice",
                    tool_path + ".function.name",
                )
            names.add(name)
        tally.has_tools = tally.has_tools or bool(tools)
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        raise type_error("a boolean", obj["parallel_tool_calls"], prefix + "parallel_tool_calls")
    if allow_functions and "functions" in obj:
        functions = obj["functions"]
        path = prefix + "functions"
        if not isinstance(functions, list):
            raise type_error("an array of functions", functions, path)
        if not 1 <= len(functions) <= _MAX_FUNCTIONS:
            raise ExampleError("invalid_value", f"must hold 1 to {_MAX_FUNCTIONS} functions", path)
        for index, function in enumerate(functions):
            _check_function_definition(function, f"{path}[{index}]", strict_allowed=False)
        tally.has_legacy_functions = True


def _check_function_definition(function: Any, path: str, *, strict_allowed: bool) -> str:
    if not isinstance(function, dict):
        raise type_error("a function object", function, path)
    keys = {"name", "description", "parameters"} | ({"strict"} if strict_allowed else set())
    check_keys(function, frozenset(keys), path + ".")
    name = check_function_name(require(function, "name", path + "."), path + ".name")
    if "description" in function:
        check_string(function["description"], path + ".description")
    if "parameters" in function and not isinstance(function["parameters"], dict):
        raise type_error("a JSON Schema object", function["parameters"], path + ".parameters")
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise type_error("a boolean", function["strict"], path + ".strict")
    return name
