"""Routes: /files."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneplane.api.auth import project_of
from tuneplane.api.multipart import receive_upload
from tuneplane.api.responses import json_response, page
from tuneplane.api.schemas import ErrorResponse, FileDeleted, FileList, FileObject, render_file
from tuneplane.services.files import PURPOSES, FileService

ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
FileId = Annotated[str, Path(min_length=1, max_length=128)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": sorted(PURPOSES)},
                    },
                }
            }
        },
    }
}


def files_router(service: FileService) -> APIRouter:
    router = APIRouter(tags=["files"], responses=ERRORS)

    @router.post(
        "/files",
        response_model=FileObject,
        openapi_extra=_UPLOAD_BODY,
        responses={413: {"model": ErrorResponse}},
        summary="Upload a file (fine-tune files are validated while they stream in)",
    )
    async def upload_file(request: Request):
        project = project_of(request)
        record = await receive_upload(request, service, project)
        return json_response(render_file(record))

    @router.get("/files", response_model=FileList)
    async def list_files(
        request: Request,
        purpose: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
        after: Annotated[str | None, Query(max_length=128)] = None,
    ):
        project = project_of(request)
        records, has_more = service.list(project, purpose=purpose, limit=limit, order=order, after=after)
        return json_response(page([render_file(r) for r in records], has_more, with_ids=True))

    @router.get("/files/{file_id}", response_model=FileObject)
    async def retrieve_file(file_id: FileId, request: Request):
        project = project_of(request)
        return json_response(render_file(service.get(project, file_id)))

    @router.delete("/files/{file_id}", response_model=FileDeleted)
    def delete_file(file_id: FileId, request: Request):
        project = project_of(request)
        service.delete(project, file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    @router.get(
        "/files/{file_id}/content",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def file_content(file_id: FileId, request: Request):
        project = project_of(request)
        record, chunks = await run_in_threadpool(service.content, project, file_id)
        return StreamingResponse(
            chunks,
            media_type="application/octet-stream",
            headers={"Content-Length": str(record.bytes), "Content-Disposition": _disposition(record.filename)},
        )

    return router


def _disposition(filename: str) -> str:
    return f"attachment; filename*=UTF-8''{quote(filename, safe='')}"

