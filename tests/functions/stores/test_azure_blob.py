"""AzureBlobContentStore against a real Azurite: staged uploads are invisible until commit."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tuneplane.ports import ContentStore, NotFound
from tuneplane.stores.azure_account import StorageAccount
from tuneplane.stores.azure_blob import AzureBlobContentStore

pytestmark = pytest.mark.azurite


@pytest.fixture
def store(azurite):  # noqa: F811
    account = StorageAccount(connection_string=azurite.connection_string)
    # A tiny block size makes every multi-block path run with kilobytes instead of megabytes.
    return AzureBlobContentStore(account, azurite.unique_name("c"), block_bytes=1024)


def test_is_a_content_store(store):
    assert isinstance(store, ContentStore)


def test_multi_block_upload_round_trips_and_is_invisible_until_commit(store):
    data = os.urandom(5000)
    upload = store.begin_upload("proj/file-abc")
    for i in range(0, len(data), 700):
        upload.write(data[i : i + 700])
    assert not store.exists("proj/file-abc")  # four blocks staged, none committed
    upload.commit()
    assert store.exists("proj/file-abc")
    chunks = list(store.open_read("proj/file-abc", chunk_size=1500))
    assert [len(c) for c in chunks] == [1500, 1500, 1500, 500]
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()


def test_empty_upload_commits_an_empty_blob(store):
    upload = store.begin_upload("empty")
    upload.commit()
    assert store.exists("empty")
    assert b"".join(store.open_read("empty")) == b""


def test_abort_leaves_nothing_and_is_idempotent(store):
    upload = store.begin_upload("aborted")
    upload.write(os.urandom(3000))
    upload.abort()
    upload.abort()
    assert not store.exists("aborted")
    with pytest.raises(NotFound):
        list(store.open_read("aborted"))
    with pytest.raises(RuntimeError):
        upload.commit()


def test_aborted_overwrite_keeps_the_previous_content(store):
    first = store.begin_upload("k")
    first.write(b"old")
    first.commit()
    second = store.begin_upload("k")
    second.write(os.urandom(4096))
    second.abort()
    assert b"".join(store.open_read("k")) == b"old"


def test_delete_and_uri(store):
    upload = store.begin_upload("a/b.jsonl")
    upload.write(b"{}\n")
    upload.commit()
    assert store.uri("a/b.jsonl") == store.container_url + "/a/b.jsonl"
    assert store.delete("a/b.jsonl") is True
    assert store.delete("a/b.jsonl") is False
    assert not store.exists("a/b.jsonl")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a\\b"])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.begin_upload(key)
