"""The scoring core in process: multi-LoRA on one base, OpenAI chat semantics, and bad input.

Adapters are random LoRA weights on the tiny random Llama, so each one changes the greedy answer;
every expected answer comes from plain peft + transformers ``generate`` on the same weights.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from serving_models import PROMPT, make_lora_adapter, plain_generate
from tuneplane_training.serving.core import ScoringCore
from tuneplane_training.serving.errors import AdapterConflict, InvalidRequest, ModelNotFound


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_lora_adapter(tiny_model_dir, root / name, seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def expected(tiny_model_dir, adapters) -> dict[str, tuple[str, int, int]]:
    return {
        "a": plain_generate(tiny_model_dir, adapters["a"], 16),
        "b": plain_generate(tiny_model_dir, adapters["b"], 16),
        "base": plain_generate(tiny_model_dir, None, 16),
    }


@pytest.fixture(scope="module")
def core(tiny_model_dir, adapters) -> ScoringCore:
    core = ScoringCore(str(tiny_model_dir), served_name="tiny-base")
    core.register_adapter("ft:tiny:acme:a:ftjob-a", str(adapters["a"]))
    core.register_adapter("ft:tiny:acme:b:ftjob-b", str(adapters["b"]))
    return core


A, B = "ft:tiny:acme:a:ftjob-a", "ft:tiny:acme:b:ftjob-b"


def ask(core: ScoringCore, model: str, **fields) -> dict:
    return core.chat({"model": model, "messages": PROMPT, "max_tokens": 16, "temperature": 0, **fields})


def text_of(response: dict) -> str:
    return response["choices"][0]["message"]["content"]


def test_two_adapters_on_one_base_each_match_plain_peft(core, expected):
    answers = {name: ask(core, model) for name, model in (("a", A), ("b", B), ("base", "tiny-base"))}
    for name, response in answers.items():
        text, prompt_tokens, completion_tokens = expected[name]
        assert text_of(response) == text, name
        assert response["usage"] == {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    assert len({text_of(r) for r in answers.values()}) == 3, "each adapter must change the answer"
    # Switching back and forth gives the same answers: no adapter state leaks between requests.
    assert text_of(ask(core, A)) == expected["a"][0]
    assert text_of(ask(core, "tiny-base")) == expected["base"][0]


def test_concurrent_requests_for_different_adapters_do_not_mix(core, expected):
    results: dict[int, str] = {}

    def call(index: int, model: str) -> None:
        results[index] = text_of(ask(core, model))

    threads = [threading.Thread(target=call, args=(i, A if i % 2 == 0 else B)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == {i: expected["a" if i % 2 == 0 else "b"][0] for i in range(6)}


def test_response_has_the_openai_shape(core, expected):
    response = ask(core, A, max_tokens=3)
    assert response["object"] == "chat.completion" and response["id"].startswith("chatcmpl-")
    assert response["model"] == A
    choice = response["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["index"] == 0
    assert choice["finish_reason"] == "length" and response["usage"]["completion_tokens"] == 3


def test_streaming_deltas_add_up_to_the_whole_answer(core, expected):
    prepared = core.prepare({"model": B, "messages": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True,
                             "stream_options": {"include_usage": True}})
    chunks = list(core.stream(prepared))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) > 3, "text must arrive incrementally"
    assert "".join(deltas) == expected["b"][0]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == expected["b"][2]


def test_closing_a_stream_early_frees_the_model(core, expected):
    chunks = core.stream(core.prepare({"model": A, "messages": PROMPT, "max_tokens": 500, "temperature": 0,
                                       "stream": True}))
    next(chunks), next(chunks)
    chunks.close()
    assert text_of(ask(core, B)) == expected["b"][0]


def test_stop_sequence_spanning_tokens_is_trimmed(core, tiny_tokenizer, expected):
    text = expected["a"][0]
    # A stop string that starts inside one token and ends inside a later one.
    pieces = [tiny_tokenizer.decode(t) for t in tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
    boundary = next(i for i in range(2, len(pieces)) if len(pieces[i - 1]) >= 2 and pieces[i])
    start = len("".join(pieces[:boundary])) - 1
    stop = text[start:start + 2]
    cut = text.find(stop)
    response = ask(core, A, stop=[stop, "never-appears-xyz"])
    assert text_of(response) == text[:cut]
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] < expected["a"][2]
    streamed = core.stream(core.prepare({"model": A, "messages": PROMPT, "max_tokens": 16, "temperature": 0,
                                         "stop": stop, "stream": True}))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed if c["choices"]) == text[:cut]


def test_seed_makes_sampling_repeatable(core):
    sample = dict(temperature=1.0, top_p=0.9, max_tokens=12)
    first, again = ask(core, A, seed=11, **sample), ask(core, A, seed=11, **sample)
    other = ask(core, A, seed=12, **sample)
    assert text_of(first) == text_of(again)
    assert text_of(first) != text_of(other)


def test_unknown_model_is_a_404(core):
    with pytest.raises(ModelNotFound) as err:
        ask(core, "ft:tiny:acme:nope:ftjob-x")
    assert err.value.status == 404 and err.value.param == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": "high"}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"max_tokens": 100000}, "messages"),
    ],
)
def test_bad_requests_name_the_field(core, fields, param):
    with pytest.raises(InvalidRequest) as err:
        ask(core, A, **fields)
    assert err.value.status == 400 and err.value.param == param
    assert param.split("[")[0] in err.value.message


def test_lru_evicts_and_reloads_adapters_on_demand(tiny_model_dir, adapters, expected):
    core = ScoringCore(str(tiny_model_dir), max_loaded_adapters=1)
    core.register_adapter("a", str(adapters["a"]))
    core.register_adapter("b", str(adapters["b"]))
    loaded = {a["name"]: a["loaded"] for a in core.adapters()}
    assert loaded == {"a": False, "b": True}
    assert text_of(ask(core, "a")) == expected["a"][0]
    assert {a["name"]: a["loaded"] for a in core.adapters()} == {"a": True, "b": False}
    assert text_of(ask(core, "b")) == expected["b"][0]
    assert core.unregister_adapter("a") and not core.unregister_adapter("a")
    with pytest.raises(ModelNotFound):
        ask(core, "a")


def test_bad_adapters_are_refused_and_change_nothing(core, tiny_model_dir, adapters, expected, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other_shape = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    misfit = make_lora_adapter(tiny_model_dir, tmp_path / "misfit", 3, model=other_shape)
    before = core.adapters()
    with pytest.raises(InvalidRequest, match="does not fit"):
        core.register_adapter("misfit", str(misfit))
    with pytest.raises(InvalidRequest, match="full model") as err:
        core.register_adapter("full", str(tiny_model_dir))
    assert err.value.code == "full_model"
    with pytest.raises(InvalidRequest, match="not a folder"):
        core.register_adapter("missing", str(tmp_path / "missing"))
    with pytest.raises(AdapterConflict):
        core.register_adapter(A, str(adapters["b"]))
    with pytest.raises(AdapterConflict):
        core.register_adapter("tiny-base", str(adapters["b"]))
    assert core.register_adapter(A, str(adapters["a"]))["name"] == A  # same path again: a no-op
    assert core.adapters() == before
    assert text_of(ask(core, A)) == expected["a"][0]
    assert text_of(ask(core, "tiny-base")) == expected["base"][0]


def test_a_full_fine_tuned_model_is_served_as_its_own_base(tiny_model_dir, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapters["a"]))
    full = tmp_path / "full"
    merged.merge_and_unload().save_pretrained(str(full))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(full))
    core = ScoringCore(str(full), served_name="ft:tiny:acme:full:ftjob-f")
    assert text_of(ask(core, "ft:tiny:acme:full:ftjob-f")) == plain_generate(full, None, 16)[0]
    assert core.model_names() == ["ft:tiny:acme:full:ftjob-f"]


def test_an_adapter_with_its_own_chat_template_is_prompted_with_it(core, adapters, tiny_tokenizer, tmp_path):
    import shutil

    own = shutil.copytree(adapters["a"], tmp_path / "own-template")
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    (own / "chat_template.jinja").write_text(template)
    core.register_adapter("own-template", str(own))
    try:
        response = ask(core, "own-template", max_tokens=2)
        rendered = "<system>Answer briefly.\n<user>What is the capital of Peru?\n<assistant>"
        assert response["usage"]["prompt_tokens"] == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    finally:
        core.unregister_adapter("own-template")


def test_a_chat_template_that_rejects_the_messages_is_a_400(core, adapters, tmp_path):
    import shutil

    strict = shutil.copytree(adapters["b"], tmp_path / "strict-template")
    (strict / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    core.register_adapter("strict-template", str(strict))
    try:
        with pytest.raises(InvalidRequest, match="no system role") as err:
            ask(core, "strict-template")
        assert err.value.param == "messages"
    finally:
        core.unregister_adapter("strict-template")
