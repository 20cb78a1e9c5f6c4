"""Fast JSON responses: routers hand back dicts already shaped like the wire models."""

from __future__ import annotations

import json

from starlette.responses import Response


def json_response(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def page(data: list[dict], has_more: bool, *, with_ids: bool = False) -> dict:
    out = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        out["first_id"] = data[0]["id"] if data else None
        out["last_id"] = data[-1]["id"] if data else None
    return out
