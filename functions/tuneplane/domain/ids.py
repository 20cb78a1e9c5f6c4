"""Ids and fine-tuned model names.

Ids are time-sortable: a fixed-width hex timestamp in microseconds, then random bits. Sorting by id
sorts by creation time, which is what lets every store page with ``id < :after`` on an index.
Within one process ids are also strictly increasing, even inside one microsecond.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

_lock = threading.Lock()
_last_us = 0

ID_PATTERN = re.compile(r"^[a-z]+-[0-9a-f]{24}$")
SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_id(prefix: str) -> str:
    global _last_us
    with _lock:
        now = time.time_ns() // 1000
        _last_us = now if now > _last_us else _last_us + 1
        stamp = _last_us
    return f"{prefix}-{stamp:014x}{secrets.token_hex(5)}"


def is_id(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "-") and bool(ID_PATTERN.match(value))


def fine_tuned_model_name(base: str, project: str, suffix: str | None, job_id: str) -> str:
    """``ft:{base}:{project}:{suffix}:{id}``, OpenAI's shape (an empty suffix stays empty).

    ``{base}`` is always the root catalog model: a model fine-tuned from ``ft:B:…`` (continued
    training) is ``ft:B:…`` too, so names keep five parts and say which base serves them."""
    parent = parse_fine_tuned_model(base)
    root = parent["base"] if parent is not None else base
    return f"ft:{root}:{project}:{suffix or ''}:{job_id}"


def parse_fine_tuned_model(name: str) -> dict[str, str] | None:
    """The parts of an ``ft:`` name, or None if it is not one."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "ft" or not parts[1] or not parts[2] or not parts[4]:
        return None
    return {"base": parts[1], "project": parts[2], "suffix": parts[3], "job_id": parts[4]}
