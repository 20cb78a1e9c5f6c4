"""ContentStore on a local directory.

Keys are opaque names the service generates (``file-…``), never a user's filename, and are checked
against a strict pattern, so no key can reach outside the directory. An upload writes to a temporary
file in the same directory and becomes visible only through an atomic rename on commit.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tuneplane.ports import NotFound

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class InvalidKey(ValueError):
    pass


class LocalUpload:
    def __init__(self, final: Path, tmp_dir: Path):
        self._final = final
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=".upload-")
        self._tmp = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)

    def commit(self) -> None:
        if self._done:
            raise RuntimeError("upload already committed or aborted")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


class LocalContentStore:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key:
            raise InvalidKey(f"invalid content key {key!r}")
        return self.root / key

    def begin_upload(self, key: str) -> LocalUpload:
        return LocalUpload(self._path(key), self._tmp)

    def open_read(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError as exc:
            raise NotFound(key) from exc
        return _chunks(fh, chunk_size)

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def pending_uploads(self) -> list[Path]:
        """Temporary files of uploads in flight (tests assert none survive a failed upload)."""
        return sorted(self._tmp.iterdir())


def _chunks(fh, chunk_size: int) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(chunk_size):
            yield chunk
