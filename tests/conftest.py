"""Shared test setup: no network for Hugging Face, and builders for small training files."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def chat_jsonl(n: int, *, system: bool = True) -> bytes:
    """``n`` valid chat examples, one JSON object per line."""
    lines = []
    for i in range(n):
        messages = [{"role": "system", "content": "You answer briefly."}] if system else []
        messages += [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{2 * i}"},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def dpo_jsonl(n: int) -> bytes:
    """``n`` valid preference (DPO) examples."""
    lines = []
    for i in range(n):
        lines.append(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": f"Say {i} politely."}]},
                    "preferred_output": [{"role": "assistant", "content": f"Certainly: {i}."}],
                    "non_preferred_output": [{"role": "assistant", "content": f"{i}!!!"}],
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def chat_file_bytes() -> bytes:
    return chat_jsonl(12)


@pytest.fixture
def dpo_file_bytes() -> bytes:
    return dpo_jsonl(12)
