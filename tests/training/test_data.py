"""Chat-template rendering, assistant-only labels, truncation and data errors."""

import json

import pytest

from conftest import chat_rows, dpo_rows, write_jsonl
from tuneplane_training.data import (IGNORE, ChatRenderer, DataError, load_chat_examples,
                                     load_preference_pairs)


def _learned_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def _encode(tokenizer, messages, tools=None):
    trainable = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages]
    return ChatRenderer(tokenizer).encode(messages, tools, trainable, line=1)


TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello, how can I help?", "weight": 0},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"celsius\": 4}"},
    {"role": "assistant", "content": "It is 4 degrees in Oslo."},
]


def test_only_trainable_assistant_turns_carry_loss_and_end_of_turn_is_learned(tiny_tokenizer):
    example = _encode(tiny_tokenizer, TOOL_CONVERSATION)
    learned = _learned_text(tiny_tokenizer, example)
    call = json.dumps([{"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}])
    assert learned == f"{call}<|im_end|>It is 4 degrees in Oslo.<|im_end|>"
    # Labels are the input ids themselves where learned (the model shifts them).
    for token, label in zip(example.input_ids, example.labels):
        assert label in (IGNORE, token)
    # Nothing from the weight-0 turn, the tool result, the user or the role headers.
    for text in ("Hello, how can I help", "celsius", "Weather", "assistant\n"):
        assert text not in learned
    assert example.supervised_tokens == sum(1 for label in example.labels if label != IGNORE)


def test_template_that_renders_tool_calls_natively_is_used_as_is(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<call>{{ c['function']['name'] }}</call>{% endfor %}"
        "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    example = _encode(tokenizer, TOOL_CONVERSATION)
    assert _learned_text(tokenizer, example) == "<call>weather</call><|im_end|>It is 4 degrees in Oslo.<|im_end|>"


def test_unstable_template_is_refused_with_a_clear_error(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    # Renders the message count up front: every prefix renders differently, so spans cannot be found.
    tokenizer.chat_template = "{{ messages|length }}{% for m in messages %}|{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="prefixes"):
        _encode(tokenizer, TOOL_CONVERSATION[:3] + [{"role": "assistant", "content": "x"}])


def test_load_counts_supervised_tokens_exactly(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows(6))
    examples, report = load_chat_examples(path, ChatRenderer(tiny_tokenizer), 512, "truncate", "training_file")
    assert len(examples) == 6 and not report.truncated and not report.dropped
    for example, row in zip(examples, chat_rows(6)):
        learned = [m["content"] for m in row["messages"] if m["role"] == "assistant" and m.get("weight", 1)]
        expected = sum(len(tiny_tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]) for text in learned)
        assert example.supervised_tokens == expected


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_over_long_examples_are_truncated_or_dropped_and_reported(tmp_path, tiny_tokenizer, policy):
    rows = chat_rows(3)
    rows[1]["messages"][-1]["content"] = "word " * 200
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    examples, report = load_chat_examples(path, ChatRenderer(tiny_tokenizer), 80, policy, "training_file")
    assert all(len(e.input_ids) <= 80 for e in examples)
    if policy == "truncate":
        assert report.truncated == [2] and len(examples) == 3
    else:
        assert report.dropped == [2] and [e.line for e in examples] == [1, 3]


@pytest.mark.parametrize("line, expected", [
    ("{not json", "training_file line 2: not valid JSON"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), r"line 2: messages\[0\].role"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}),
     r"line 2: messages\[1\].weight"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}),
     "line 2: no assistant message"),
    (json.dumps({"prompt": "old format"}), "line 2: messages must be"),
])
def test_bad_lines_are_named(tmp_path, tiny_tokenizer, line, expected):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(chat_rows(1)[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected):
        load_chat_examples(path, ChatRenderer(tiny_tokenizer), 512, "truncate", "training_file")


def test_preference_pairs_learn_only_the_final_answer(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", dpo_rows(2))
    pairs, _ = load_preference_pairs(path, ChatRenderer(tiny_tokenizer), 512, "truncate", "training_file")
    assert _learned_text(tiny_tokenizer, pairs[0].chosen) == "The capital is Paris.<|im_end|>"
    assert _learned_text(tiny_tokenizer, pairs[0].rejected) == "I do not know, sorry.<|im_end|>"
    bad = dpo_rows(1)[0]
    bad["preferred_output"] = [{"role": "user", "content": "x"}]
    write_jsonl(path, [bad])
    with pytest.raises(DataError, match="line 1: preferred_output"):
        load_preference_pairs(path, ChatRenderer(tiny_tokenizer), 512, "truncate", "training_file")
