"""ContentStore on Azure Blob Storage (azure-storage-blob).

An upload streams into staged (uncommitted) blocks of a block blob. Nothing is visible under the
key until ``commit()`` commits the block list in one call, so a failed or aborted upload never
leaves a partial file: the service discards uncommitted blocks on its own (after a week), and
``abort`` drops the block list. Block ids are equal-length, as the service requires.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

from tuneplane.ports import NotFound
from tuneplane.stores.azure_account import StorageAccount, storage_errors

_BLOCK_BYTES = 4 * 1024 * 1024
_MAX_BLOCKS = 50_000  # the service's limit per block blob


def _check_blob_name(key: str) -> str:
    if not key or len(key) > 1024 or key.startswith("/") or "\\" in key or any(ord(c) < 0x20 for c in key):
        raise ValueError(f"content key {key!r} is not a valid blob name")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"content key {key!r} is not a valid blob name")
    return key


class BlobUpload:
    def __init__(self, blob: Any, block_bytes: int) -> None:
        self._blob = blob
        self._block_bytes = block_bytes
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self._prefix = uuid.uuid4().hex  # distinguishes this upload's blocks from a concurrent one's
        self._closed = False

    def _stage(self, data: bytes) -> None:
        if len(self._blocks) >= _MAX_BLOCKS:
            raise ValueError("upload is larger than a block blob can hold")
        raw = f"{self._prefix}-{len(self._blocks):08d}".encode()
        block_id = base64.b64encode(raw).decode()
        self._blob.stage_block(block_id=block_id, data=data, length=len(data))
        self._blocks.append(block_id)

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise RuntimeError("upload is already committed or aborted")
        self._buffer += chunk
        while len(self._buffer) >= self._block_bytes:
            data = bytes(self._buffer[: self._block_bytes])
            del self._buffer[: self._block_bytes]
            self._stage(data)

    def commit(self) -> None:
        from azure.storage.blob import BlobBlock

        if self._closed:
            raise RuntimeError("upload is already committed or aborted")
        if self._buffer or not self._blocks:
            self._stage(bytes(self._buffer))
            self._buffer.clear()
        self._blob.commit_block_list([BlobBlock(block_id=b) for b in self._blocks])
        self._closed = True

    def abort(self) -> None:
        # Uncommitted blocks are never visible and the service garbage-collects them.
        self._buffer.clear()
        self._blocks.clear()
        self._closed = True


@storage_errors
class AzureBlobContentStore:
    def __init__(self, account: StorageAccount, container: str, *, block_bytes: int = _BLOCK_BYTES) -> None:
        from azure.core.exceptions import ResourceExistsError

        self._setting = account.credential_setting
        service = account.blob_service()
        self._container = service.get_container_client(container)
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        self._block_bytes = block_bytes

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(_check_blob_name(key))

    def begin_upload(self, key: str) -> BlobUpload:
        return BlobUpload(self._blob(key), self._block_bytes)

    def open_read(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(key)
        try:
            downloader = blob.download_blob(max_concurrency=1)
        except ResourceNotFoundError as error:
            raise NotFound(f"content {key} not found") from error
        return self._chunks(downloader, chunk_size)

    @staticmethod
    def _chunks(downloader: Any, chunk_size: int) -> Iterator[bytes]:
        # The SDK's chunk size is the service round trip; re-slice to what the caller asked for.
        pending = bytearray()
        for piece in downloader.chunks():
            pending += piece
            while len(pending) >= chunk_size:
                yield bytes(pending[:chunk_size])
                del pending[:chunk_size]
        if pending:
            yield bytes(pending)

    def delete(self, key: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._blob(key).delete_blob()
        except ResourceNotFoundError:
            return False
        return True

    def exists(self, key: str) -> bool:
        return bool(self._blob(key).exists())

    def uri(self, key: str) -> str:
        return self._blob(key).url

    def key_of(self, uri: str) -> str | None:
        """The key of a ``uri()`` of this store, or None if the URI is not in this container."""
        prefix = self._container.url.rstrip("/") + "/"
        if not uri.startswith(prefix):
            return None
        from urllib.parse import unquote

        return unquote(uri[len(prefix):])

    def list_keys(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, in name order (used for job outputs, not user files)."""
        return [blob.name for blob in self._container.list_blobs(name_starts_with=prefix)]

    def copy(self, source_key: str, target_key: str) -> None:
        """Stream a copy through this process: works with any credential the store has, with
        no SAS and no cross-request authorisation of the source."""
        upload = self.begin_upload(target_key)
        try:
            for chunk in self.open_read(source_key, chunk_size=self._block_bytes):
                upload.write(chunk)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        upload = self.begin_upload(key)
        upload.write(data)
        upload.commit()

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.open_read(key))

    @property
    def container_url(self) -> str:
        return self._container.url
