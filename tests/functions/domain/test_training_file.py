"""The streaming training-file validator: every error code, every accepted shape, and chunking."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuneplane.domain.training_file import (
    DEFAULT_MAX_LINE_BYTES,
    TrainingFileError,
    TrainingFileSummary,
    TrainingFileValidator,
)

MB = 1024 * 1024


def U(text: Any = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def A(text: Any = "Hello!", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def S(text: str = "Be brief.") -> dict[str, Any]:
    return {"role": "system", "content": text}


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages) or [S(), U(), A()], **extra}


def dpo(
    prompt: list[dict[str, Any]] | None = None,
    preferred: Any = None,
    non_preferred: Any = None,
    *,
    alias: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    names = (
        ("preferred_completion", "non_preferred_completion")
        if alias
        else ("preferred_output", "non_preferred_output")
    )
    return {
        "input": {"messages": prompt if prompt is not None else [U("Capital of France?")]},
        names[0]: preferred if preferred is not None else [A("Paris.")],
        names[1]: non_preferred if non_preferred is not None else [A("Lyon, probably.")],
        **extra,
    }


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def jsonl(*lines: Any, end: str = "\n") -> bytes:
    """Dicts become JSON lines; bytes and str are written as they are."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(json.dumps(line, ensure_ascii=False).encode())
    return end.encode().join(out) + end.encode()


def validate(data: bytes, chunks: list[int] | None = None, **kwargs: Any) -> TrainingFileSummary:
    """Feeds ``data`` split at the given offsets (one chunk when None) and finishes."""
    validator = TrainingFileValidator(max_bytes=kwargs.pop("max_bytes", 64 * MB), **kwargs)
    cuts = [0, *(chunks or []), len(data)]
    for start, end in zip(cuts, cuts[1:], strict=False):
        validator.feed(data[start:end])
    return validator.finish()


def outcome(data: bytes, chunks: list[int] | None = None, **kwargs: Any) -> Any:
    try:
        return validate(data, chunks, **kwargs)
    except TrainingFileError as err:
        return (err.code, err.line, err.field, str(err))


def error_of(data: bytes, **kwargs: Any) -> TrainingFileError:
    with pytest.raises(TrainingFileError) as info:
        validate(data, **kwargs)
    return info.value


# --- accepted files ---------------------------------------------------------------------------

VALID = {
    "single turn": (jsonl(chat()), "chat", 1),
    "ten examples": (jsonl(*[chat()] * 10), "chat", 10),
    "multi-turn with developer and names": (
        jsonl(
            chat(
                {"role": "developer", "content": "x"},
                U(),
                A(),
                {**U("more"), "name": "ann"},
                A("ok", name="bot"),
            )
        ),
        "chat",
        1,
    ),
    "text parts": (
        jsonl(
            chat(
                {"role": "system", "content": [{"type": "text", "text": "a"}]},
                U([{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]),
                A([{"type": "text", "text": "d"}]),
            )
        ),
        "chat",
        1,
    ),
    "tool call round trip": (
        jsonl(
            chat(
                U("Weather?"),
                A(None, tool_calls=[CALL]),
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                A("Sunny."),
                tools=[TOOL],
                parallel_tool_calls=False,
            )
        ),
        "chat",
        1,
    ),
    "tool call without content key": (
        jsonl(
            chat(
                U(),
                {"role": "assistant", "tool_calls": [CALL]},
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "text", "text": "ok"}],
                },
            )
        ),
        "chat",
        1,
    ),
    "weights 0 and 1": (jsonl(chat(U(), A("bad", weight=0), U(), A("good", weight=1))), "chat", 1),
    "weight as 1.0": (jsonl(chat(U(), A("good", weight=1.0))), "chat", 1),
    "empty tools list": (jsonl(chat(tools=[])), "chat", 1),
    "refusal": (
        jsonl(chat(U(), {"role": "assistant", "content": None, "refusal": "I can't."})),
        "chat",
        1,
    ),
    "legacy functions": (
        jsonl(
            chat(
                U(),
                {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "42"},
                A("42."),
                {"role": "function", "name": "f", "content": None},
                A("done"),
                functions=[{"name": "f", "parameters": {}}],
            )
        ),
        "chat",
        1,
    ),
    "user message last": (jsonl(chat(U(), A(), U())), "chat", 1),
    "dpo": (jsonl(dpo(), dpo()), "dpo", 2),
    "dpo aliases": (jsonl(dpo(alias=True)), "dpo", 1),
    "dpo alias mixed with canonical across outputs": (
        jsonl(
            {
                "input": {"messages": [U()]},
                "preferred_output": [A("a")],
                "non_preferred_completion": [A("b")],
            }
        ),
        "dpo",
        1,
    ),
    "dpo multi-turn input with tools": (
        jsonl(
            {
                **dpo([S(), U(), A(), U("and now?")]),
                "input": {
                    "messages": [S(), U(), A(), U("and now?")],
                    "tools": [TOOL],
                    "parallel_tool_calls": True,
                },
            }
        ),
        "dpo",
        1,
    ),
    "dpo output with tool use": (
        jsonl(
            dpo(
                preferred=[
                    A(None, tool_calls=[CALL]),
                    {"role": "tool", "tool_call_id": "call_1", "content": "9C"},
                    A("9C."),
                ]
            )
        ),
        "dpo",
        1,
    ),
    "dpo input ending with a tool result": (
        jsonl(
            dpo(
                [
                    U(),
                    A(None, tool_calls=[CALL]),
                    {"role": "tool", "tool_call_id": "call_1", "content": "9C"},
                ]
            )
        ),
        "dpo",
        1,
    ),
    "BOM": (b"\xef\xbb\xbf" + jsonl(chat(), chat()), "chat", 2),
    "CRLF": (jsonl(chat(), chat(), chat(), end="\r\n"), "chat", 3),
    "no trailing newline": (jsonl(chat(), chat())[:-1], "chat", 2),
    "trailing blank lines": (jsonl(chat(), chat()) + b"\n  \r\n\t\n", "chat", 2),
    "multibyte text and a surrogate-pair escape": (
        jsonl(
            chat(U("Grüße, 東京 🚀"), A("🚀 ok")),
            '{"messages": [{"role": "user", "content": "\\ud83d\\ude80"}, '
            '{"role": "assistant", "content": "é"}]}',
        ),
        "chat",
        2,
    ),
}


@pytest.mark.parametrize("name", list(VALID))
def test_accepts_valid_files(name: str) -> None:
    data, fmt, count = VALID[name]
    summary = validate(data)
    assert (summary.format, summary.example_count) == (fmt, count)
    assert summary.total_bytes == len(data)


def test_summary_counts_what_the_file_holds() -> None:
    data = jsonl(
        chat(S(), U("abc"), A("defg", weight=0), U("h"), A("ij"), tools=[TOOL]),
        chat(
            U(),
            A(None, tool_calls=[CALL]),
            {"role": "tool", "tool_call_id": "call_1", "content": "x"},
            A("y"),
        ),
    )
    summary = validate(data)
    assert summary.example_count == 2
    assert summary.line_count == 2
    assert summary.message_count == 9
    assert summary.assistant_message_count == 4
    assert summary.trained_assistant_message_count == 3
    assert summary.has_tools and summary.has_weights and not summary.has_legacy_functions
    # 9 system + 3 + 4 + 1 + 2, then 2 + len(arguments) + 1 + 1
    assert summary.text_chars == 9 + 3 + 4 + 1 + 2 + 2 + len(CALL["function"]["arguments"]) + 1 + 1
    assert summary.max_line_bytes == max(len(line) for line in data.split(b"\n"))
    dpo_summary = validate(jsonl(dpo(), dpo(alias=True)))
    assert (dpo_summary.message_count, dpo_summary.assistant_message_count) == (6, 4)
    assert not (dpo_summary.has_tools or dpo_summary.has_weights)


def test_legacy_functions_are_flagged() -> None:
    assert validate(VALID["legacy functions"][0]).has_legacy_functions


# --- refused files: (file, code, line, field) -------------------------------------------------

GOOD = chat()


def with_message(index: int, **changes: Any) -> dict[str, Any]:
    example = copy.deepcopy(GOOD)
    example["messages"][index].update(changes)
    return {k: v for k, v in example.items()}


def dropping(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


INVALID = {
    # encoding and framing
    "bad utf-8": (jsonl(GOOD, b'{"messages": "\xff"}'), "invalid_encoding", 2, None),
    "truncated utf-8 at end of file": (jsonl(GOOD) + b'{"x": "\xc3', "invalid_encoding", 2, None),
    "utf-16": (jsonl(GOOD).decode().encode("utf-16"), "invalid_encoding", 1, None),
    "BOM after the start": (
        jsonl(GOOD) + b"\xef\xbb\xbf" + jsonl(GOOD),
        "invalid_encoding",
        2,
        None,
    ),
    "unpaired surrogate escape": (
        jsonl(GOOD, '{"messages": [{"role": "user", "content": "\\udc00"}]}'),
        "invalid_encoding",
        2,
        "messages[0].content",
    ),
    "malformed json": (jsonl(GOOD, GOOD, '{"messages": [}'), "invalid_json", 3, None),
    "NaN": (jsonl('{"messages": NaN}'), "invalid_json", 1, None),
    "two objects on a line": (jsonl(json.dumps(GOOD) * 2), "invalid_json", 1, None),
    "array line": (jsonl(GOOD, [GOOD]), "not_an_object", 2, None),
    "string line": (jsonl('"hello"'), "not_an_object", 1, None),
    "blank line between examples": (jsonl(GOOD, "", GOOD), "blank_line", 2, None),
    "blank line before a bad line": (jsonl(GOOD, " ", "{oops"), "blank_line", 2, None),
    "empty file": (b"", "empty_file", None, None),
    "only a BOM and blank lines": (b"\xef\xbb\xbf\n\r\n \n", "empty_file", None, None),
    # format
    "neither format": (jsonl({"prompt": "a", "completion": "b"}), "unknown_format", 1, None),
    "chat then dpo": (jsonl(GOOD, dpo()), "mixed_formats", 2, None),
    "dpo then chat": (jsonl(dpo(), GOOD), "mixed_formats", 2, None),
    "both formats in one line": (jsonl({**GOOD, **dpo()}), "mixed_formats", 1, None),
    "chat file line without messages": (
        jsonl(GOOD, {"prompt": "x"}),
        "missing_field",
        2,
        "messages",
    ),
    # chat structure
    "unknown top-level field": (jsonl({**GOOD, "model": "gpt"}), "unknown_field", 1, "model"),
    "unknown message field": (
        jsonl(with_message(1, mood="happy")),
        "unknown_field",
        1,
        "messages[1].mood",
    ),
    "tool_call_id on a user message": (
        jsonl(with_message(1, tool_call_id="x")),
        "unknown_field",
        1,
        "messages[1].tool_call_id",
    ),
    "unknown text part field": (
        jsonl(chat(U([{"type": "text", "text": "a", "x": 1}]), A())),
        "unknown_field",
        1,
        "messages[0].content[0].x",
    ),
    "messages not a list": (jsonl({"messages": {"role": "user"}}), "invalid_type", 1, "messages"),
    "messages empty": (jsonl({"messages": []}), "missing_field", 1, "messages"),
    "message not an object": (jsonl(chat(U(), "hi", A())), "invalid_type", 1, "messages[1]"),
    "missing role": (jsonl(chat(U(), {"content": "x"})), "missing_field", 1, "messages[1].role"),
    "missing user content": (
        jsonl(chat({"role": "user"}, A())),
        "missing_field",
        1,
        "messages[0].content",
    ),
    "null user content": (jsonl(chat(U(None), A())), "invalid_type", 1, "messages[0].content"),
    "number content": (jsonl(chat(U(7), A())), "invalid_type", 1, "messages[0].content"),
    "name not a string": (jsonl(with_message(1, name=3)), "invalid_type", 1, "messages[1].name"),
    "empty name": (jsonl(with_message(1, name="")), "invalid_value", 1, "messages[1].name"),
    "robot role": (
        jsonl(*[GOOD] * 6, with_message(2, role="robot")),
        "invalid_role",
        7,
        "messages[2].role",
    ),
    "role not a string": (
        jsonl(with_message(0, role=["user"])),
        "invalid_role",
        1,
        "messages[0].role",
    ),
    "no assistant": (jsonl(chat(S(), U())), "missing_assistant_message", 1, "messages"),
    "all weights 0": (jsonl(chat(U(), A(weight=0))), "missing_assistant_message", 1, "messages"),
    "weight 2": (jsonl(chat(U(), A(weight=2))), "invalid_weight", 1, "messages[1].weight"),
    "weight true": (jsonl(chat(U(), A(weight=True))), "invalid_weight", 1, "messages[1].weight"),
    "weight string": (jsonl(chat(U(), A(weight="1"))), "invalid_weight", 1, "messages[1].weight"),
    "weight 0.5": (jsonl(chat(U(), A(weight=0.5))), "invalid_weight", 1, "messages[1].weight"),
    "weight on a user message": (
        jsonl(with_message(1, weight=1)),
        "unknown_field",
        1,
        "messages[1].weight",
    ),
    "empty part list": (jsonl(chat(U([]), A())), "invalid_content", 1, "messages[0].content"),
    "image part": (
        jsonl(chat(U([{"type": "image_url", "image_url": {"url": "x"}}]), A())),
        "unsupported_feature",
        1,
        "messages[0].content[0].type",
    ),
    "image part in system": (
        jsonl(chat({"role": "system", "content": [{"type": "image_url"}]}, U(), A())),
        "invalid_content",
        1,
        "messages[0].content[0].type",
    ),
    "unknown part type": (
        jsonl(chat(U([{"type": "video", "video": "x"}]), A())),
        "invalid_content",
        1,
        "messages[0].content[0].type",
    ),
    "part text not a string": (
        jsonl(chat(U([{"type": "text", "text": 5}]), A())),
        "invalid_type",
        1,
        "messages[0].content[0].text",
    ),
    "part without text": (
        jsonl(chat(U([{"type": "text"}]), A())),
        "missing_field",
        1,
        "messages[0].content[0].text",
    ),
    "audio on assistant": (
        jsonl(chat(U(), A(audio={"id": "a1"}))),
        "unsupported_feature",
        1,
        "messages[1].audio",
    ),
    "assistant null content without tool calls": (
        jsonl(chat(U(), A(None))),
        "invalid_content",
        1,
        "messages[1].content",
    ),
    "assistant without content": (
        jsonl(chat(U(), {"role": "assistant"})),
        "missing_field",
        1,
        "messages[1].content",
    ),
    # tools
    "tool_calls not a list": (
        jsonl(chat(U(), A(None, tool_calls=CALL))),
        "invalid_type",
        1,
        "messages[1].tool_calls",
    ),
    "tool_calls empty": (
        jsonl(chat(U(), A("x", tool_calls=[]))),
        "invalid_value",
        1,
        "messages[1].tool_calls",
    ),
    "tool call without id": (
        jsonl(chat(U(), A(None, tool_calls=[dropping(CALL, "id")]))),
        "missing_field",
        1,
        "messages[1].tool_calls[0].id",
    ),
    "tool call wrong type": (
        jsonl(chat(U(), A(None, tool_calls=[{**CALL, "type": "code"}]))),
        "invalid_value",
        1,
        "messages[1].tool_calls[0].type",
    ),
    "arguments as object": (
        jsonl(
            chat(
                U(),
                A(None, tool_calls=[{**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]),
            )
        ),
        "invalid_type",
        1,
        "messages[1].tool_calls[0].function.arguments",
    ),
    "bad function name": (
        jsonl(
            chat(
                U(),
                A(
                    None,
                    tool_calls=[{**CALL, "function": {"name": "get weather", "arguments": "{}"}}],
                ),
            )
        ),
        "invalid_value",
        1,
        "messages[1].tool_calls[0].function.name",
    ),
    "tool message without tool_call_id": (
        jsonl(chat(U(), A(None, tool_calls=[CALL]), {"role": "tool", "content": "x"}, A())),
        "missing_field",
        1,
        "messages[2].tool_call_id",
    ),
    "tool message answering nothing": (
        jsonl(
            chat(
                U(),
                A(None, tool_calls=[CALL]),
                {"role": "tool", "tool_call_id": "call_9", "content": "x"},
                A(),
            )
        ),
        "invalid_tool_call_id",
        1,
        "messages[2].tool_call_id",
    ),
    "tool message with a name": (
        jsonl(
            chat(
                U(),
                A(None, tool_calls=[CALL]),
                {"role": "tool", "tool_call_id": "call_1", "content": "x", "name": "f"},
                A(),
            )
        ),
        "unknown_field",
        1,
        "messages[2].name",
    ),
    "tools not a list": (jsonl({**GOOD, "tools": TOOL}), "invalid_type", 1, "tools"),
    "tool of type retrieval": (
        jsonl({**GOOD, "tools": [{"type": "retrieval"}]}),
        "invalid_value",
        1,
        "tools[0].type",
    ),
    "tool without function": (
        jsonl({**GOOD, "tools": [{"type": "function"}]}),
        "missing_field",
        1,
        "tools[0].function",
    ),
    "tool parameters not an object": (
        jsonl(
            {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}
        ),
        "invalid_type",
        1,
        "tools[0].function.parameters",
    ),
    "duplicate tool": (
        jsonl({**GOOD, "tools": [TOOL, TOOL]}),
        "invalid_value",
        1,
        "tools[1].function.name",
    ),
    "unknown tool function field": (
        jsonl({**GOOD, "tools": [{"type": "function", "function": {"name": "f", "returns": "x"}}]}),
        "unknown_field",
        1,
        "tools[0].function.returns",
    ),
    "parallel_tool_calls string": (
        jsonl({**GOOD, "parallel_tool_calls": "yes"}),
        "invalid_type",
        1,
        "parallel_tool_calls",
    ),
    "functions empty": (jsonl({**GOOD, "functions": []}), "invalid_value", 1, "functions"),
    "function message without name": (
        jsonl(chat(U(), {"role": "function", "content": "x"}, A())),
        "missing_field",
        1,
        "messages[1].name",
    ),
    # dpo
    "dpo alias and canonical together": (
        jsonl({**dpo(), "preferred_completion": [A("x")]}),
        "conflicting_fields",
        1,
        "preferred_completion",
    ),
    "dpo unknown field": (jsonl({**dpo(), "score": 1}), "unknown_field", 1, "score"),
    "dpo unknown input field": (
        jsonl({**dpo(), "input": {"messages": [U()], "temperature": 1}}),
        "unknown_field",
        1,
        "input.temperature",
    ),
    "dpo functions in input": (
        jsonl({**dpo(), "input": {"messages": [U()], "functions": [{"name": "f"}]}}),
        "unknown_field",
        1,
        "input.functions",
    ),
    "dpo missing input": (jsonl(dropping(dpo(), "input")), "missing_field", 1, "input"),
    "dpo input not an object": (jsonl({**dpo(), "input": [U()]}), "invalid_type", 1, "input"),
    "dpo input without messages": (
        jsonl({**dpo(), "input": {}}),
        "missing_field",
        1,
        "input.messages",
    ),
    "dpo missing non-preferred": (
        jsonl(dropping(dpo(), "non_preferred_output")),
        "missing_field",
        1,
        "non_preferred_output",
    ),
    "dpo input ends with assistant": (
        jsonl(dpo([U(), A()])),
        "invalid_role",
        1,
        "input.messages[1].role",
    ),
    "dpo empty output": (
        jsonl(dpo(preferred=[])),
        "missing_assistant_message",
        1,
        "preferred_output",
    ),
    "dpo output not a list": (jsonl(dpo(preferred=A())), "invalid_type", 1, "preferred_output"),
    "dpo user in output": (
        jsonl(dpo(non_preferred=[U()])),
        "invalid_role",
        1,
        "non_preferred_output[0].role",
    ),
    "dpo output ending with tool": (
        jsonl(
            dpo(
                preferred=[
                    A(None, tool_calls=[CALL]),
                    {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                ]
            )
        ),
        "invalid_role",
        1,
        "preferred_output[1].role",
    ),
    "dpo empty assistant output": (
        jsonl(dpo(preferred=[A("")])),
        "invalid_content",
        1,
        "preferred_output[0].content",
    ),
    "dpo weight": (
        jsonl(dpo(preferred=[A("x", weight=1)])),
        "invalid_weight",
        1,
        "preferred_output[0].weight",
    ),
    "dpo identical outputs": (
        jsonl(dpo(preferred=[A("same")], non_preferred=[A("same")])),
        "invalid_content",
        1,
        "non_preferred_output",
    ),
    "dpo alias error names the alias": (
        jsonl(dpo(preferred=[U()], alias=True)),
        "invalid_role",
        1,
        "preferred_completion[0].role",
    ),
    "dpo bad role in input": (
        jsonl(dpo([{"role": "human", "content": "x"}])),
        "invalid_role",
        1,
        "input.messages[0].role",
    ),
    # wrong JSON types deeper down
    "nested too deeply": (
        jsonl('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "invalid_json",
        1,
        None,
    ),
    "surrogate in a key": (
        jsonl('{"messages": [{"\\udfff": 1}]}'),
        "invalid_encoding",
        1,
        "messages[0].\\udfff",  # escaped: the message must stay encodable text
    ),
    "content part not an object": (
        jsonl(chat(U(["hi"]), A())),
        "invalid_type",
        1,
        "messages[0].content[0]",
    ),
    "content part type not a string": (
        jsonl(chat(U([{"type": ["text"]}]), A())),
        "invalid_type",
        1,
        "messages[0].content[0].type",
    ),
    "tool call not an object": (
        jsonl(chat(U(), A(None, tool_calls=["call_1"]))),
        "invalid_type",
        1,
        "messages[1].tool_calls[0]",
    ),
    "function_call not an object": (
        jsonl(chat(U(), A(None, function_call="f"))),
        "invalid_type",
        1,
        "messages[1].function_call",
    ),
    "tool not an object": (
        jsonl({**GOOD, "tools": ["get_weather"]}),
        "invalid_type",
        1,
        "tools[0]",
    ),
    "tool strict not a boolean": (
        jsonl({**GOOD, "tools": [{"type": "function", "function": {"name": "f", "strict": 1}}]}),
        "invalid_type",
        1,
        "tools[0].function.strict",
    ),
    "functions not an array": (
        jsonl({**GOOD, "functions": {"name": "f"}}),
        "invalid_type",
        1,
        "functions",
    ),
    "function definition not an object": (
        jsonl({**GOOD, "functions": ["f"]}),
        "invalid_type",
        1,
        "functions[0]",
    ),
    "strict on a legacy function": (
        jsonl({**GOOD, "functions": [{"name": "f", "strict": True}]}),
        "unknown_field",
        1,
        "functions[0].strict",
    ),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_refuses_invalid_files(name: str) -> None:
    data, code, line, field = INVALID[name]
    err = error_of(data)
    assert (err.code, err.line, err.field) == (code, line, field), str(err)
    assert err.message and err.message in str(err)
    if line is not None:
        assert str(err).startswith(f"line {line}: ")
    if field is not None:
        assert f"{field}: " in str(err)


def test_every_documented_code_is_exercised() -> None:
    import tuneplane.domain.training_file as module

    # The code table's rows are the docstring lines that start with a ``code`` and a wide gap.
    documented = set(re.findall(r"^``([a-z_]+)``\s{2,}", module.__doc__ or "", flags=re.MULTILINE))
    exercised = {code for _, code, _, _ in INVALID.values()} | {"file_too_large", "line_too_long"}
    assert len(documented) >= 20
    assert documented == exercised


def test_error_reads_as_one_sentence() -> None:
    err = error_of(INVALID["robot role"][0])
    assert str(err) == (
        "line 7: messages[2].role: "
        "'robot' is not one of system, developer, user, assistant, tool, function"
    )
    assert isinstance(err, ValueError)


def test_reports_the_first_error() -> None:
    data = jsonl(GOOD, with_message(0, role="robot"), {"messages": 5})
    assert (error_of(data).line, error_of(data).code) == (2, "invalid_role")


def test_long_user_values_are_cut_in_messages() -> None:
    err = error_of(jsonl(with_message(0, role="x" * 5000)))
    assert len(str(err)) < 200
    err = error_of(jsonl({**GOOD, "k" * 5000: 1}))
    assert (err.code, len(str(err)) < 300) == ("unknown_field", True)


@pytest.mark.parametrize("name", [n for n, case in INVALID.items() if case[0].endswith(b"\n")])
def test_a_bad_line_is_refused_as_soon_as_it_ends(name: str) -> None:
    data, code, _, _ = INVALID[name]
    validator = TrainingFileValidator(max_bytes=64 * MB)
    if code == "empty_file":
        validator.feed(data)  # nothing wrong yet: more examples could follow
        return
    with pytest.raises(TrainingFileError):
        validator.feed(data)  # not deferred to finish()


@pytest.mark.parametrize("name", list(INVALID))
def test_messages_are_encodable_text(name: str) -> None:
    """The API puts str(err) in a JSON body; a lone surrogate there would turn a 400 into a 500."""
    str(error_of(INVALID[name][0])).encode("utf-8")


# --- sizes --------------------------------------------------------------------------------------


def test_max_bytes_is_inclusive_and_checked_as_bytes_arrive() -> None:
    data = jsonl(GOOD, GOOD)
    assert validate(data, max_bytes=len(data)).example_count == 2
    validator = TrainingFileValidator(max_bytes=len(data) - 1)
    validator.feed(data[:10])
    with pytest.raises(TrainingFileError) as info:
        validator.feed(data[10:])  # refused before finish(), mid-line
    assert (info.value.code, info.value.line, info.value.field) == ("file_too_large", None, None)
    assert str(len(data) - 1) in str(info.value)


def test_line_too_long_is_refused_before_the_line_ends() -> None:
    validator = TrainingFileValidator(max_bytes=64 * MB, max_line_bytes=1000)
    validator.feed(jsonl(GOOD))
    validator.feed(b'{"messages": "' + b"a" * 600)
    with pytest.raises(TrainingFileError) as info:
        validator.feed(b"a" * 600)  # no newline yet: memory must stay bounded
    assert (info.value.code, info.value.line) == ("line_too_long", 2)


def test_line_at_the_limit_passes_even_with_crlf() -> None:
    line = json.dumps(chat(U("x" * 100), A()))
    limit = len(line)
    assert validate(jsonl(line, line, end="\r\n"), max_line_bytes=limit).max_line_bytes == limit
    assert error_of(jsonl(line), max_line_bytes=limit - 1).code == "line_too_long"
    assert error_of(line.encode(), max_line_bytes=limit - 1).code == "line_too_long"  # last line
    with_bom = b"\xef\xbb\xbf" + jsonl(line, end="\r\n")
    for cut in range(len(with_bom) + 1):  # the BOM does not count, wherever the chunks fall
        assert validate(with_bom, [cut], max_line_bytes=limit).max_line_bytes == limit


def test_default_line_limit_refuses_a_huge_line() -> None:
    huge = json.dumps(chat(U("x" * (DEFAULT_MAX_LINE_BYTES + 10)), A())).encode()
    validator = TrainingFileValidator(max_bytes=64 * MB)
    with pytest.raises(TrainingFileError) as info:
        for start in range(0, len(huge), MB):
            validator.feed(huge[start : start + MB])
    assert (info.value.code, info.value.line) == ("line_too_long", 1)


# --- lifecycle ----------------------------------------------------------------------------------


def test_an_error_is_sticky() -> None:
    validator = TrainingFileValidator(max_bytes=MB)
    with pytest.raises(TrainingFileError) as first:
        validator.feed(jsonl("{bad", GOOD))
    with pytest.raises(TrainingFileError) as again:
        validator.feed(jsonl(GOOD))
    assert again.value is first.value
    with pytest.raises(TrainingFileError) as at_finish:
        validator.finish()
    assert at_finish.value is first.value


def test_finish_is_idempotent_and_closes_the_validator() -> None:
    validator = TrainingFileValidator(max_bytes=MB)
    validator.feed(jsonl(GOOD))
    assert validator.finish() == validator.finish()
    with pytest.raises(RuntimeError):
        validator.feed(jsonl(GOOD))


def test_feed_takes_bytes_only() -> None:
    validator = TrainingFileValidator(max_bytes=MB)
    with pytest.raises(TypeError):
        validator.feed(json.dumps(GOOD))  # type: ignore[arg-type]
    validator.feed(bytearray(jsonl(GOOD)))
    validator.feed(memoryview(jsonl(GOOD)))
    assert validator.finish().example_count == 2


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_bytes": 10, "max_line_bytes": 0}])
def test_limits_must_be_positive(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TrainingFileValidator(**kwargs)


# --- chunk boundaries ---------------------------------------------------------------------------

# Small files whose outcome must not depend on where the chunks fall: BOM, CRLF, multibyte
# characters (2-, 3- and 4-byte), a trailing line without newline, and errors at several depths.
CHUNKED = {
    "valid mixed": b"\xef\xbb\xbf"
    + jsonl(
        chat(U("héllo 東 🚀"), A("ok")),
        chat(
            U(),
            A(None, tool_calls=[CALL]),
            {"role": "tool", "tool_call_id": "call_1", "content": "é"},
            A("✓"),
        ),
        end="\r\n",
    )[:-2],
    "valid dpo": jsonl(dpo(preferred=[A("ü")]), dpo(alias=True)) + b"\n",
    "bad utf-8 in line 2": jsonl(chat(U("€"), A())) + b'{"messages": "\xe2\x82"}\n',
    "robot on line 2": jsonl(chat(U("ß"), A()), with_message(2, role="robot")),
    "blank then bad": jsonl(GOOD, "", "{"),
    "mixed": jsonl(dpo(), chat(U("日本"), A())),
}


@pytest.mark.parametrize("name", list(CHUNKED))
def test_outcome_does_not_depend_on_chunk_boundaries(name: str) -> None:
    data = CHUNKED[name]
    expected = outcome(data)
    assert outcome(data, list(range(1, len(data)))) == expected  # one byte at a time
    for cut in range(len(data) + 1):
        assert outcome(data, [cut]) == expected, cut
    if name.startswith("valid"):
        assert isinstance(expected, TrainingFileSummary)
    else:
        assert isinstance(expected, tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CHUNKED)),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
)
def test_random_chunkings_agree(name: str, cuts: list[float]) -> None:
    data = CHUNKED[name]
    offsets = sorted({int(c * len(data)) for c in cuts})
    assert outcome(data, offsets) == outcome(data)
