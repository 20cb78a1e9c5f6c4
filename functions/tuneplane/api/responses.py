"""Fast JSON responses: routers hand back dicts already shaped like the wire models."""

from __future__ import annotations

from pydantic_core import to_json
from starlette.responses import Response


def json_response(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core's serializer (Rust) is several times faster than json.dumps on list pages.
    body = to_json(content)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def page(data: list[dict], has_more: bool, *, with_ids: bool = False) -> dict:
    out = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        out["first_id"] = data[0]["id"] if data else None
        out["last_id"] = data[-1]["id"] if data else None
    return out
