"""Packing and batching.

Packing puts several examples into one row of at most ``max_seq_length`` tokens (best-fit
decreasing, so rows are nearly full). The collator then gives the model ``position_ids`` that restart
at 0 for every example and NO attention mask. transformers 5.x reads restarting position ids as packed
documents: SDPA and eager attention get a block-diagonal causal mask, flash-attention 2 gets varlen
cu_seqlens. So no token attends across documents (TRL's SDPA packing does not guarantee this).
The first label of every document is -100, so no loss crosses a boundary either.
"""

from __future__ import annotations

import bisect
import torch

from .data import IGNORE, Example


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most ``capacity`` total length.

    Items are placed longest first, each into the fullest bin that still has room (a sorted list of
    free space makes each placement O(log bins))."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for item in order:
        size = lengths[item]
        if size > capacity:
            raise ValueError(f"item {item} of length {size} exceeds capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, index = free.pop(slot)
            bins[index].append(item)
            bisect.insort(free, (space - size, index))
        else:
            bins.append([item])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    # Keep each bin's documents in file order: deterministic, and easier to read when debugging.
    return [sorted(b) for b in bins]


def pack(examples: list[Example], capacity: int) -> list[list[Example]]:
    groups = best_fit_decreasing([len(e.input_ids) for e in examples], capacity)
    return [[examples[i] for i in group] for group in groups]


class PaddedCollator:
    """One example per row, right-padded to the longest row of the batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PackedCollator:
    """One pack (a list of examples) per row; position ids restart per document, no attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[list[Example]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(e.input_ids) for e in pack) for pack in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        for row, pack in enumerate(batch):
            offset = 0
            for example in pack:
                n = len(example.input_ids)
                ids[row, offset:offset + n] = torch.tensor(example.input_ids)
                labels[row, offset + 1:offset + n] = torch.tensor(example.labels[1:])
                positions[row, offset:offset + n] = torch.arange(n)
                offset += n
            # Padding becomes its own "document" (positions restart at 0), so it is masked off from
            # the real documents, and its labels are ignored.
            positions[row, offset:] = torch.arange(width - offset)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def batch_supervised_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())

