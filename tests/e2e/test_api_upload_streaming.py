"""Uploads stream: a file far larger than the server's memory growth goes through the validator to
disk chunk by chunk, and one bad line near the end of a large file still leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import chat_jsonl
from tests.e2e.conftest import free_port, start_server, stop, wait_healthy
from tuneplane.settings import Settings

pytestmark = pytest.mark.slow


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_large_upload_does_not_grow_server_memory_by_its_size(tmp_path):
    port = free_port()
    settings = Settings(home=tmp_path / "home", port=port, api_key="tp-stream", max_upload_bytes=64 * 1024 * 1024)
    process = start_server(settings)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        headers = {"Authorization": "Bearer tp-stream"}
        url = f"http://127.0.0.1:{port}/v1/files"
        small = httpx.post(url, headers=headers, files={"file": ("w.jsonl", chat_jsonl(10))}, data={"purpose": "fine-tune"})
        assert small.status_code == 200  # warm up: imports, threads, connections
        baseline = peak_rss_bytes(process.pid)

        big = tmp_path / "big.jsonl"
        big.write_bytes(chat_jsonl(60_000))  # ~10 MB
        size = big.stat().st_size
        with big.open("rb") as fh:
            r = httpx.post(url, headers=headers, files={"file": ("big.jsonl", fh)}, data={"purpose": "fine-tune"}, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["bytes"] == size
        big_id = r.json()["id"]
        growth = peak_rss_bytes(process.pid) - baseline
        assert growth < size / 2, f"server memory grew by {growth} bytes for a {size}-byte upload"

        # A bad last line: refused, and neither content nor a temporary file remains.
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(chat_jsonl(20_000) + b'{"messages": "oops"}\n')
        with bad.open("rb") as fh:
            r = httpx.post(url, headers=headers, files={"file": ("bad.jsonl", fh)}, data={"purpose": "fine-tune"}, timeout=300)
        assert r.status_code == 400 and "line 20001" in r.json()["error"]["message"]
        files_dir = settings.contents_dir
        assert sorted(p.name for p in files_dir.iterdir() if p.name != ".tmp") == sorted([small.json()["id"], big_id])
        assert list((files_dir / ".tmp").iterdir()) == []
    finally:
        stop(process)

