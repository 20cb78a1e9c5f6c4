"""FileService upload sessions: a refused or failed upload leaves neither a record nor content."""

from __future__ import annotations

import pytest

from tests.conftest import chat_jsonl
from tuneplane.api.errors import ApiError
from tuneplane.services.files import FileService, check_filename
from tuneplane.settings import Settings
from tuneplane.wiring import build_adapters


@pytest.fixture
def adapters(tmp_path):
    built = build_adapters(Settings(home=tmp_path))
    yield built
    built.close()


@pytest.fixture
def service(adapters):
    return FileService(adapters.files, adapters.contents, max_bytes=4096)


def leftovers(adapters) -> list[str]:
    root = adapters.contents.root
    return sorted(p.name for p in root.iterdir() if p.name != ".tmp") + sorted(p.name for p in (root / ".tmp").iterdir())


def test_upload_in_odd_chunks_records_format_count_and_hash(service, adapters):
    import hashlib

    data = chat_jsonl(12)
    session = service.begin_upload("p", "fine-tune", "train.jsonl")
    for i in range(0, len(data), 7):
        session.feed(data[i : i + 7])
    record = session.finish()
    assert (record.format, record.example_count, record.bytes) == ("chat", 12, len(data))
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.content_key == record.id
    assert adapters.files.get_file("p", record.id) == record
    assert b"".join(adapters.contents.open_read(record.content_key)) == data


def test_bad_line_aborts_and_leaves_nothing(service, adapters):
    session = service.begin_upload("p", "fine-tune", "t.jsonl")
    with pytest.raises(ApiError) as err:
        session.feed(b'{"messages": [{"role": "user", "content": "x"}]}\n')
        session.finish()
    assert err.value.status == 400 and err.value.param == "file"
    assert leftovers(adapters) == [] and adapters.files.list_files("p") == []


def test_size_limit_is_enforced_while_streaming(service, adapters):
    session = service.begin_upload("p", "batch", "big.bin")
    session.feed(b"x" * 4000)
    with pytest.raises(ApiError) as err:
        session.feed(b"x" * 200)
    assert err.value.status == 413 and err.value.code == "file_too_large"
    assert leftovers(adapters) == []


def test_store_failure_after_commit_removes_the_content(service, adapters, monkeypatch):
    def broken(record):
        raise RuntimeError("database is gone")

    monkeypatch.setattr(adapters.files, "create_file", broken)
    session = service.begin_upload("p", "fine-tune", "t.jsonl")
    session.feed(chat_jsonl(10))
    with pytest.raises(RuntimeError):
        session.finish()
    assert leftovers(adapters) == []


def test_delete_removes_record_and_content(service, adapters):
    session = service.begin_upload("p", "batch", "b.jsonl")
    session.feed(b"{}\n")
    record = session.finish()
    with pytest.raises(ApiError):
        service.delete("other-project", record.id)
    service.delete("p", record.id)
    assert leftovers(adapters) == [] and adapters.files.get_file("p", record.id) is None


@pytest.mark.parametrize("name", ["données.jsonl", "训练数据.jsonl", "a b (1).jsonl", "x" * 255])
def test_ordinary_unicode_names_are_kept(name):
    assert check_filename(name) == name


@pytest.mark.parametrize("name", ["", "..", "a/b", "a\\b", "nul\x00.jsonl", "bidi\u202e.jsonl", "x" * 256, "é" * 128])
def test_names_that_hide_a_path_or_characters_are_refused(name):
    with pytest.raises(ApiError) as err:
        check_filename(name)
    assert (err.value.status, err.value.param, err.value.code) == (400, "file", "invalid_filename")
