"""Incremental decoding: stop strings found across token boundaries and inside multi-byte
characters, and streamed text that never shows a half-decoded character."""

from __future__ import annotations

import pytest
import torch

from tuneplane_training.serving.generation import TextTracker

TEXT = "Hi! I like 😀 a lot. Wörld: the end."


def feed(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[list[str], TextTracker, int]:
    """Run the tracker token by token as generate would; returns (deltas, tracker, tokens fed)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    deltas: list[str] = []
    tracker = TextTracker(tokenizer, prompt_tokens=1, stop=stop, on_delta=deltas.append)
    fed = 0
    for end in range(1, len(ids) + 1):
        fed = end
        # Position 0 stands for the prompt, which the tracker must skip.
        if bool(tracker(torch.tensor([[0, *ids[:end]]]), scores=None)[0]):
            break
    tracker.finish(torch.tensor(ids[:fed]))
    return deltas, tracker, fed


def test_emoji_is_split_over_several_tokens(tiny_tokenizer):
    pieces = [tiny_tokenizer.decode([t]) for t in tiny_tokenizer("😀", add_special_tokens=False)["input_ids"]]
    assert len(pieces) > 1 and "\ufffd" in "".join(pieces), "the test needs a character spread over tokens"


def test_without_stop_the_deltas_are_the_text_and_never_half_a_character(tiny_tokenizer):
    deltas, tracker, _ = feed(tiny_tokenizer, TEXT, ())
    assert "".join(deltas) == TEXT == tracker.text
    assert not any("\ufffd" in d for d in deltas)
    assert not tracker.hit_stop


@pytest.mark.parametrize("stop", ["😀 a", "ld:", "rld", "!"])
def test_stop_strings_end_the_text_before_them(tiny_tokenizer, stop):
    deltas, tracker, fed = feed(tiny_tokenizer, TEXT, (stop, "not-in-text"))
    expected = TEXT[: TEXT.find(stop)]
    assert "".join(deltas) == expected == tracker.text
    assert tracker.hit_stop
    assert fed < len(tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]), "generation must end early"


def test_a_cancelled_generation_stops_at_the_next_token(tiny_tokenizer):
    import threading

    cancelled = threading.Event()
    tracker = TextTracker(tiny_tokenizer, prompt_tokens=0, stop=(), cancelled=cancelled)
    ids = torch.tensor([tiny_tokenizer("Hello there", add_special_tokens=False)["input_ids"]])
    assert not bool(tracker(ids, scores=None)[0])
    cancelled.set()
    assert bool(tracker(ids, scores=None)[0])
