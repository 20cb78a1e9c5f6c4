"""Streaming multipart/form-data upload for ``POST /files``.

Starlette's form parser buffers every file before the route runs; we parse the request stream
ourselves instead, so each chunk goes straight through the training-file validator and into the
ContentStore's pending upload, a bad line is refused as soon as it arrives, and memory stays bounded
whatever the file size.
"""

from __future__ import annotations

import tempfile

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from tuneplane.api.errors import ApiError, bad_request
from tuneplane.domain.records import FileRecord
from tuneplane.services.files import FileService, UploadSession, too_large

FORM_FIELD_MAX = 1024  # bytes of a non-file field such as purpose
MULTIPART_OVERHEAD = 64 * 1024  # headers, boundaries and small fields around the file
DRAIN_LIMIT = 8 * 1024 * 1024  # after refusing, read this much more so the client sees our answer


def _bad_multipart(message: str) -> ApiError:
    return bad_request(message, param="file", code="invalid_multipart")


class _Form:
    """Callback target for the parser: routes each part's bytes to where they belong."""

    def __init__(self, service: FileService, project: str):
        self.service = service
        self.project = project
        self.purpose: str | None = None
        self.filename: str | None = None
        self.session: UploadSession | None = None
        self.spool = None  # the file's bytes when they arrive before the purpose field
        self.seen_file = False
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._part: str | None = None  # "file" | "purpose"
        self._purpose_bytes = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._append("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._append("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _append(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)
        if len(self._field) + len(self._value) > 4096:
            raise _bad_multipart("A multipart header is too long.")

    def _part_begin(self) -> None:
        self._headers, self._part = {}, None

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise _bad_multipart("Each multipart part needs 'Content-Disposition: form-data; name=...'.")
        name = params[b"name"].decode("utf-8", "replace")
        if name == "file":
            if self.seen_file:
                raise _bad_multipart("Only one 'file' part is allowed.")
            if b"filename" not in params:
                raise _bad_multipart("The 'file' part must be a file upload (it has no filename).")
            self.seen_file = True
            self._part = "file"
            try:
                self.filename = params[b"filename"].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_request("The filename is not valid UTF-8.", param="file", code="invalid_filename") from exc
            if self.purpose is not None:
                self.session = self.service.begin_upload(self.project, self.purpose, self.filename)
            else:
                # The purpose comes later: spool to disk and replay once it is known.
                self.spool = tempfile.TemporaryFile()
        elif name == "purpose":
            if self.purpose is not None or self._purpose_bytes:
                raise bad_request("Only one 'purpose' field is allowed.", param="purpose", code="invalid_value")
            self._part = "purpose"
        else:
            raise bad_request(f"Unrecognized form field: '{name}'.", param=name, code="unknown_parameter")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            if self.session is not None:
                self.session.feed(data[start:end])
            else:
                self.spool.write(data[start:end])
        elif self._part == "purpose":
            self._purpose_bytes += data[start:end]
            if len(self._purpose_bytes) > FORM_FIELD_MAX:
                raise bad_request("The 'purpose' field is too long.", param="purpose", code="invalid_value")

    def _part_end(self) -> None:
        if self._part == "purpose":
            try:
                self.purpose = self._purpose_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_request("The 'purpose' field is not valid UTF-8.", param="purpose", code="invalid_value") from exc
            self._purpose_bytes = bytearray()
        self._part = None

    def _end(self) -> None:
        self.ended = True

    def finish(self) -> FileRecord:
        if not self.ended:
            raise _bad_multipart("The multipart body ended before its closing boundary.")
        if not self.seen_file:
            raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if self.session is None:
            self.session = self.service.begin_upload(self.project, self.purpose, self.filename)
            self.spool.seek(0)
            while chunk := self.spool.read(1 << 16):
                self.session.feed(chunk)
        return self.session.finish()

    def abort(self) -> None:
        if self.session is not None:
            self.session.abort()
        if self.spool is not None:
            self.spool.close()
            self.spool = None


async def receive_upload(request: Request, service: FileService, project: str) -> FileRecord:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise _bad_multipart("The request must be multipart/form-data with a boundary, holding 'file' and 'purpose'.")
    limit = service.max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(service.max_bytes)
    form = _Form(service, project)
    parser = MultipartParser(params[b"boundary"], callbacks=form.callbacks())
    received = 0
    stream = request.stream()
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise too_large(service.max_bytes)
            # Validation and disk writes are blocking work: keep them off the event loop.
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
        record = await run_in_threadpool(form.finish)
        form.spool and form.spool.close()
        return record
    except FormParserError as exc:
        form.abort()
        await _drain(stream)
        raise _bad_multipart(f"Malformed multipart body: {exc}.") from exc
    except ClientDisconnect:
        form.abort()
        raise
    except BaseException:
        form.abort()
        await _drain(stream)
        raise


async def _drain(stream) -> None:
    """Read (and drop) some of what the client is still sending, so it gets to read our error."""
    drained = 0
    try:
        async for chunk in stream:
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                return
    except (ClientDisconnect, RuntimeError):
        return
