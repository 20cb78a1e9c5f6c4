"""Files: streamed, validated uploads; listing; retrieval; deletion.

An upload is a session: bytes go to the ContentStore's pending upload and, for ``fine-tune``, through
the streaming TrainingFileValidator at the same time. The record is written only after the content is
committed; any failure aborts the pending upload, so a refused file leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections.abc import Iterator

from tuneplane.api.errors import ApiError, bad_request, not_found
from tuneplane.domain.ids import new_id
from tuneplane.domain.records import FileRecord
from tuneplane.domain.training_file import TrainingFileError, TrainingFileValidator
from tuneplane.ports import ContentStore, FileStore, NotFound

# OpenAI's upload purposes. Only fine-tune files are used here; the others are stored as-is so that
# clients that upload them (batch inputs, assistants documents) get OpenAI's behaviour.
PURPOSES = frozenset({"fine-tune", "batch", "assistants", "vision", "user_data", "evals"})
MAX_FILENAME_BYTES = 255


def check_filename(raw: str | None) -> str:
    """The display name to store. Names that could be mistaken for a path are refused, not rewritten."""
    if raw is None or raw == "":
        raise bad_request("The 'file' part needs a filename.", param="file", code="invalid_filename")
    name = unicodedata.normalize("NFC", raw)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise bad_request(
            "The filename must not contain a path ('/', '\\\\' or '..').", param="file", code="invalid_filename"
        )
    for ch in name:
        # Control and format characters (NUL, newlines, right-to-left overrides) hide what a name is.
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise bad_request(
                f"The filename contains a disallowed character U+{ord(ch):04X}.", param="file", code="invalid_filename"
            )
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise bad_request(
            f"The filename is longer than {MAX_FILENAME_BYTES} bytes.", param="file", code="invalid_filename"
        )
    return name


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise bad_request("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise bad_request(
            f"Invalid value for 'purpose': {purpose!r}. Supported: {', '.join(sorted(PURPOSES))}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"The file is larger than the limit of {max_bytes} bytes.", param="file", code="file_too_large")


class UploadSession:
    def __init__(self, service: "FileService", project: str, purpose: str, filename: str):
        self.service = service
        self.project = project
        self.purpose = purpose
        self.filename = filename
        self.id = new_id("file")
        self._upload = service.contents.begin_upload(self.id)
        self._sha = hashlib.sha256()
        self._size = 0
        self._validator = (
            TrainingFileValidator(max_bytes=service.max_bytes) if purpose == "fine-tune" else None
        )
        self._open = True

    def feed(self, chunk: bytes) -> None:
        try:
            self._size += len(chunk)
            if self._size > self.service.max_bytes:
                raise too_large(self.service.max_bytes)
            if self._validator is not None:
                self._validator.feed(chunk)
            self._sha.update(chunk)
            self._upload.write(chunk)
        except TrainingFileError as err:
            self.abort()
            raise self._file_error(err) from err
        except BaseException:
            self.abort()
            raise

    def finish(self) -> FileRecord:
        try:
            fmt, count = "none", 0
            if self._validator is not None:
                summary = self._validator.finish()
                fmt, count = summary.format, summary.example_count
            elif self._size == 0:
                raise bad_request("The file is empty.", param="file", code="empty_file")
            record = FileRecord(
                id=self.id,
                project=self.project,
                bytes=self._size,
                created_at=int(time.time()),
                filename=self.filename,
                purpose=self.purpose,
                status="processed",
                content_key=self.id,
                sha256=self._sha.hexdigest(),
                format=fmt,
                example_count=count,
            )
            self._upload.commit()
            self._open = False
        except TrainingFileError as err:
            self.abort()
            raise self._file_error(err) from err
        except BaseException:
            self.abort()
            raise
        try:
            self.service.files.create_file(record)
        except BaseException:
            self.service.contents.delete(self.id)
            raise
        return record

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._upload.abort()

    def _file_error(self, err: TrainingFileError) -> ApiError:
        if err.code == "file_too_large":
            return too_large(self.service.max_bytes)
        return bad_request(f"Invalid training file: {err}", param="file", code=err.code)


class FileService:
    def __init__(self, files: FileStore, contents: ContentStore, *, max_bytes: int):
        self.files = files
        self.contents = contents
        self.max_bytes = max_bytes

    def begin_upload(self, project: str, purpose: str | None, filename: str | None) -> UploadSession:
        return UploadSession(self, project, check_purpose(purpose), check_filename(filename))

    def get(self, project: str, file_id: str) -> FileRecord:
        record = self.files.get_file(project, file_id)
        if record is None:
            raise not_found("file", file_id, param="file_id", code="file_not_found")
        return record

    def list(self, project: str, *, purpose: str | None, limit: int, order: str, after: str | None):
        records = self.files.list_files(project, purpose=purpose, limit=limit + 1, order=order, after=after)
        return records[:limit], len(records) > limit

    def delete(self, project: str, file_id: str) -> None:
        record = self.get(project, file_id)
        # Record first: once it is gone nobody can reach the content, so a crash in between leaves
        # only an unreachable blob, never a record pointing at nothing.
        if not self.files.delete_file(project, file_id):
            raise not_found("file", file_id, param="file_id", code="file_not_found")
        self.contents.delete(record.content_key)

    def content(self, project: str, file_id: str) -> tuple[FileRecord, Iterator[bytes]]:
        record = self.get(project, file_id)
        try:
            return record, self.contents.open_read(record.content_key)
        except NotFound as exc:
            raise not_found("file", file_id, param="file_id", code="file_not_found") from exc
