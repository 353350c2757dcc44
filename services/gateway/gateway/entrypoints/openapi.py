"""The gateway's HTTP operations, declared once: routed from here and described from here.

Each ``Operation`` names its handler and the pydantic models (``entrypoints.schemas``) that
validate its body / query and build its answer; ``document`` turns the same list into the
OpenAPI 3.1 document served at ``/openapi.json`` (pydantic's JSON Schema is 3.1's dialect, so
the models' schemas go in as they are), and ``docs_page`` into a self-contained HTML page at
``/docs`` (no CDN, no script). Every error is ``application/problem+json`` with a stable
``code``; the codes an operation can answer are listed under each status.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.entrypoints import schemas

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBLEM = "application/problem+json"

#: Every stable error code, with its status and meaning (the spec's introduction lists them).
CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "the body is not a JSON object"),
    "invalid_<field>": (400, "that field or query parameter is missing or malformed"),
    "invalid_page_token": (400, "a page token or cursor this API did not issue"),
    "invalid_session": (401, "no, expired, forged or wrong-kind token: log in again"),
    "refresh_token_reused": (401, "that refresh token was already used: log in again"),
    "invalid_login_code": (401, "WeChat refused the wx.login code (used, expired, made up)"),
    "not_a_member": (404, "the session is not a member of its mall yet (POST /v1/me/join)"),
    "unknown_miniprogram": (404, "the appid is not a mall's mini-program"),
    "not_found": (404, "no such route"),
    "plate_not_bound": (404, "that plate is not one of the member's"),
    "receipt_not_found": (404, "no such payment of the member"),
    "guide_not_found": (404, "no such shopping guide in the mall"),
    "invalid_plate": (400, "not a Chinese licence plate (or not of that colour)"),
    "plate_bound_elsewhere": (409, "another member of the mall holds that plate"),
    "too_many_plates": (409, "the member holds as many plates as the mall allows"),
    "no_payment_at_store": (409, "a guide is chosen at a store where the member paid"),
    "method_not_allowed": (405, "the route does not take that method"),
    "body_too_large": (413, "the body is over the gateway's limit"),
    "rate_limited": (429, "too many requests from this member or address: see Retry-After"),
    "invalid_claim": (400, "coupons refused the claim as malformed (its reason says why)"),
    "not_eligible": (403, "that coupon is for other members (tier, tags)"),
    "points_required": (403, "that coupon is bought with points"),
    "stock_not_found": (404, "no such coupon stock in the mall"),
    "code_not_found": (404, "no such claim code in the mall"),
    "offer_not_found": (404, "no such commitment-card offer in the mall"),
    "sold_out": (409, "no coupon left (reason: stock_sold_out, or stock_sold_out_today)"),
    "limit_reached": (409, "the member holds as many of that coupon as it allows"),
    "not_open_yet": (409, "claims of that coupon have not opened yet"),
    "claim_ended": (409, "claims of that coupon are over"),
    "paused": (409, "claims of that coupon are paused"),
    "request_id_reused": (409, "that request_id was used for another claim"),
    "insufficient_points": (409, "too few points available for that reward (available: how many)"),
    "not_for_points": (409, "that coupon is not sold for points"),
    "internal": (500, "a fault of the gateway (reported, never expected)"),
    "wechat_unavailable": (502, "WeChat's code-to-session failed: retry"),
    "upstream_unavailable": (503, "a service behind the gateway is down: retry shortly"),
    "directory_loading": (503, "the gateway is starting: retry shortly"),
    "session_store_unavailable": (503, "the refresh-token store is unreachable: retry shortly"),
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    answer: type[BaseModel] | None = None
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    #: Needs ``Authorization: Bearer <access token>``.
    auth: bool = False
    #: Status → the codes it may answer, beyond the ones every operation may answer.
    errors: dict[int, str] = field(default_factory=dict)
    tag: str = "mini-program"
    #: A media type other than JSON for the answer (e.g. ``text/event-stream``).
    media_type: str = "application/json"
    description: str = ""
    #: Answers in WeChat Pay's refusal shape instead of problem+json (the webhooks).
    platform: bool = False
    #: Also takes the access token as ``?access_token=`` (EventSource cannot set headers).
    query_token: bool = False
    extra_statuses: dict[int, str] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _schemas(operations: Sequence[Operation]) -> dict[str, Any]:
    inputs = {m for op in operations for m in (op.body, op.query) if m is not None}
    outputs = {op.answer for op in operations if op.answer is not None}
    outputs |= {schemas.Problem, schemas.PlatformRefusal}
    pairs: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in inputs]
    pairs += [(m, "serialization") for m in outputs - inputs]
    _, top = models_json_schema(
        sorted(pairs, key=lambda p: p[0].__name__), ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 64},
        }
        for name in _path_names(op.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "description": prop.get("description", ""),
                    "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
                }
            )
    return params


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _errors(op: Operation) -> dict[int, str]:
    errors: dict[int, str] = {}
    if op.body is not None or op.query is not None:
        errors[400] = "invalid_json, invalid_<field>"
    if op.body is not None:
        errors[413] = "body_too_large"
    if op.auth:
        errors[401] = "invalid_session"
    if not op.platform:  # WeChat Pay is never rate-limited: it retries, payments wait
        errors[429] = "rate_limited"
    errors[500] = "internal"
    errors[503] = "upstream_unavailable"
    for status, codes in op.errors.items():
        errors[status] = f"{errors[status]}, {codes}" if status in errors else codes
    return dict(sorted(errors.items()))


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": op.summary}
    if op.answer is not None:
        ok["content"] = {op.media_type: {"schema": _ref(op.answer)}}
    elif op.media_type != "application/json":
        ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
    responses[str(op.status)] = ok
    for status, description in op.extra_statuses.items():  # other statuses, the same body
        responses[str(status)] = {**ok, "description": description}
    error_model = schemas.PlatformRefusal if op.platform else schemas.Problem
    error_type = "application/json" if op.platform else PROBLEM
    for status, codes in _errors(op).items():
        if str(status) in responses:
            continue
        response: dict[str, Any] = {
            "description": f"code: {codes}",
            "content": {error_type: {"schema": _ref(error_model)}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
            }
        responses[str(status)] = response
    return responses


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(op),
        "responses": _responses(op),
    }
    if op.description:
        doc["description"] = op.description
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    if op.auth:
        doc["security"] = [{"bearer": []}, *([{"query_token": []}] if op.query_token else [])]
    else:
        doc["security"] = []
    return doc


def document(operations: Sequence[Operation], *, version: str = "1.0.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of these operations."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    codes = "\n".join(f"| `{c}` | {s} | {m} |" for c, (s, m) in CODES.items())
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Mall Circle gateway",
            "version": version,
            "description": (
                "The mall mini-program's API and WeChat Pay's webhooks. Errors are RFC 9457 "
                "`application/problem+json` with a stable `code`:\n\n| code | status | "
                f"meaning |\n|---|---|---|\n{codes}\n\nThe member card (`GET /v1/me/card`) "
                "is served from the gateway's memory until a change event for the member "
                "reaches it (points, tier, coupons, parking) or a few seconds pass: re-read "
                "it on an SSE event and the change is there."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(operations),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "query_token": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
    }


def docs_page(spec: dict[str, Any]) -> str:
    """A readable page of the spec, rendered here: no CDN, no script."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Mall Circle gateway API"
        "</title><style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "pre{background:#f4f4f4;padding:.5em;overflow:auto}h3{margin-bottom:.2em}</style>"
        "</head><body>",
        f"<h1>{esc(spec['info']['title'])}</h1>",
        "<p><a href='/openapi.json'>openapi.json</a> (OpenAPI 3.1)</p>",
        f"<pre>{esc(spec['info']['description'])}</pre>",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h3>{esc(method.upper())} {esc(path)}</h3><p>{esc(op['summary'])}</p>")
            if op.get("security"):
                parts.append("<p>Needs <code>Authorization: Bearer &lt;access_token&gt;</code></p>")
            for p in op["parameters"]:
                where, name, what = p["in"], p["name"], p.get("description", "")
                parts.append(f"<p><code>{esc(where)} {esc(name)}</code> {esc(what)}</p>")
            if "requestBody" in op:
                parts.append(
                    f"<p>Body</p><pre>{esc(json.dumps(op['requestBody'], indent=1))}</pre>"
                )
            for status, response in op["responses"].items():
                parts.append(f"<p><b>{esc(status)}</b> {esc(response['description'])}</p>")
    parts.append(
        f"<h2>Schemas</h2><pre>{esc(json.dumps(spec['components']['schemas'], indent=1))}</pre>"
    )
    parts.append("</body></html>")
    return "".join(parts)


def serve_spec(app: web.Application, operations: Sequence[Operation]) -> None:
    """Route ``/openapi.json`` and ``/docs`` for these operations (built once)."""
    spec = document(operations)
    body = json.dumps(spec).encode()
    page = docs_page(spec)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
