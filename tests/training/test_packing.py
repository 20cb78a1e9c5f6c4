"""Packing is contamination-free: packed documents see exactly what they would see alone."""

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import chat_rows, write_jsonl
from tuneplane_training.data import IGNORE, ChatRenderer, load_chat_examples
from tuneplane_training.packing import PackedCollator, PaddedCollator, best_fit_decreasing, pack


def test_best_fit_decreasing_fills_bins_and_places_every_item_once():
    rng = random.Random(0)
    lengths = [min(int(rng.paretovariate(1.2) * 20), 500) for _ in range(300)]
    bins = best_fit_decreasing(lengths, 512)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    lower_bound = -(-sum(lengths) // 512)
    assert len(bins) <= lower_bound + 1  # near optimal on heavy-tailed lengths
    with pytest.raises(ValueError):
        best_fit_decreasing([600], 512)
    assert best_fit_decreasing([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]


@pytest.fixture(scope="module")
def examples(tiny_tokenizer, tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("pack") / "t.jsonl", chat_rows(7))
    items, _ = load_chat_examples(path, ChatRenderer(tiny_tokenizer), 512, "truncate", "training_file")
    return items


def _model(path, attention):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=attention)
    model.config.use_cache = False
    return model.eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_each_document_alone(tiny_model_dir, tiny_tokenizer, examples, attention):
    model = _model(tiny_model_dir, attention)
    packs = pack(examples, 400)
    assert any(len(p) >= 3 for p in packs)
    batch = PackedCollator(tiny_tokenizer.pad_token_id)(packs)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        worst = 0.0
        for row, documents in enumerate(packs):
            offset = 0
            for example in documents:
                n = len(example.input_ids)
                alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
                worst = max(worst, (packed[row, offset:offset + n] - alone).abs().max().item())
                offset += n
    assert worst < 1e-4, worst


def test_naive_concatenation_would_leak(tiny_model_dir, tiny_tokenizer, examples):
    """The check above can fail: plain concatenation (one causal mask over the row) changes logits."""
    model = _model(tiny_model_dir, "sdpa")
    first, second = examples[0], examples[1]
    ids = torch.tensor([first.input_ids + second.input_ids])
    with torch.no_grad():
        leaked = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, len(first.input_ids):]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    assert (leaked - alone).abs().max().item() > 1e-2


def _token_loss_sum(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def test_packed_loss_equals_unpacked_loss(tiny_model_dir, tiny_tokenizer, examples):
    model = _model(tiny_model_dir, "sdpa")
    packs = pack(examples, 400)
    packed_batch = PackedCollator(tiny_tokenizer.pad_token_id)(packs)
    padded_batch = PaddedCollator(tiny_tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        packed = model(input_ids=packed_batch["input_ids"], position_ids=packed_batch["position_ids"],
                       labels=packed_batch["labels"]).loss
        unpacked = model(**padded_batch).loss
        packed_sum = _token_loss_sum(model(input_ids=packed_batch["input_ids"],
                                           position_ids=packed_batch["position_ids"]).logits, packed_batch["labels"])
        unpacked_sum = _token_loss_sum(model(**{k: v for k, v in padded_batch.items() if k != "labels"}).logits,
                                       padded_batch["labels"])
    tokens = sum(e.supervised_tokens for e in examples)
    assert int((packed_batch["labels"][:, 1:] != IGNORE).sum()) == tokens
    assert int((padded_batch["labels"][:, 1:] != IGNORE).sum()) == tokens
    assert abs(packed.item() - unpacked.item()) < 1e-5
    assert abs(packed_sum.item() - unpacked_sum.item()) < 1e-3
