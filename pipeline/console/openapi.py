"""The console API's OpenAPI 3.1 document, served at ``/api/openapi.json`` (kept beside the routes it describes;
a test checks that every route answers as documented)."""

from __future__ import annotations

from typing import Any

import pipeline

__all__ = ["document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASONS = {400: "a malformed parameter or body", 401: "missing or wrong bearer token",
            403: "cross-site request or unknown Host refused", 404: "no such alert", 409: "refused by the decoder",
            413: "request body too large", 415: "the body is not JSON", 503: "too many event streams open"}


def _errors(*codes: int, **reasons: str) -> dict[str, Any]:
    return {str(code): _json(_ref("Error"), reasons.get(f"e{code}", _REASONS[code])) for code in codes}


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_KEY = {"name": "key", "in": "path", "required": True, "description": "the alert's idempotency key "
        "(stream_id:seq:kind), percent-encoded", "schema": {"type": "string"}}
_TIME = "unix seconds, or an ISO 8601 date-time (UTC unless it names a zone)"

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "status"],
              "properties": {"error": {"type": "string", "description": "one line"}, "status": {"type": "integer"}}},
    "Review": {"type": "object", "required": ["state"], "properties": {
        "state": {"enum": ["open", "acknowledged", "dismissed"]}, "at": _NUMBER_OR_NULL,
        "by": {"type": ["string", "null"]}, "note": {"type": ["string", "null"]}}},
    "Alert": {"type": "object", "required": ["key", "camera", "stream_id", "seq", "kind", "scored_at", "review"],
              "properties": {
                  "key": {"type": "string"}, "camera": {"type": "string"}, "stream_id": {"type": "string"},
                  "seq": {"type": "integer"}, "clip_key": {"type": "string"},
                  "kind": {"type": "string", "examples": ["novel", "adversarial"]},
                  "verdict": {"type": ["string", "null"]}, "p_value": _NUMBER_OR_NULL,
                  "fused_score": _NUMBER_OR_NULL, "prediction": {"type": ["string", "null"]},
                  "softmax": _NUMBER_OR_NULL, "reasons": {"type": "array", "items": {"type": "string"}},
                  "clip_start": _NUMBER_OR_NULL, "clip_end": _NUMBER_OR_NULL,
                  "scored_at": {"type": "number", "description": "unix seconds"},
                  "thumbnail": {"type": ["string", "null"], "description": "URL of the JPEG thumbnail"},
                  "review": _ref("Review")}},
    "AlertDetail": {"allOf": [_ref("Alert"), {"type": "object", "properties": {
        "layer_scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "smoothing": {"type": ["object", "null"]},
        "body": {"type": "object", "description": "the alert body as logged (alert.schema.json)"}}}]},
    "AlertList": {"type": "object", "required": ["alerts", "count", "total"], "properties": {
        "alerts": {"type": "array", "items": _ref("Alert")}, "count": {"type": "integer"},
        "total": {"type": "integer", "description": "alerts matching the filters, beyond `limit` too"}}},
    "Camera": {"type": "object", "required": ["camera", "state"], "properties": {
        "camera": {"type": "string"},
        "state": {"enum": ["unknown", "up", "stalled", "reconnecting", "down", "ended"]},
        "detail": {"type": "string"}, "stream_id": {"type": ["string", "null"]}, "state_at": _NUMBER_OR_NULL,
        "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "verdicts since the run started, by label"},
        "recent": {"type": "array", "items": {"type": "string"}, "description": "the last verdicts, oldest first"},
        "recent_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "last_verdict": {"type": ["object", "null"]}, "alerts": {"type": "integer"},
        "open_alerts": {"type": "integer"}}},
    "CameraRequest": {"type": "object", "required": ["id"], "description": "a source of the pipeline config "
                      "(`sources` entry: id, and exactly one of uri, path, webcam; loop, pace, stride, timeouts, "
                      "options...); relative paths are relative to the config file, ${VAR} is not read",
                      "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-/]+$"},
                                     "uri": {"type": "string"}, "path": {"type": "string"},
                                     "webcam": {"type": "integer", "minimum": 0}}},
    "CameraChange": {"type": "object", "required": ["id", "camera", "state"], "properties": {
        "id": {"type": "string", "description": "the source's stream id"}, "camera": {"type": "string"},
        "state": {"enum": ["added", "removed"]}}},
    "ReviewRequest": {"type": "object", "additionalProperties": False, "properties": {
        "by": {"type": "string", "maxLength": 200}, "note": {"type": "string", "maxLength": 2000}}},
}


def _review(action: str, state: str) -> dict[str, Any]:
    return {"post": {
        "summary": f"mark the alert {state}", "operationId": f"{action}Alert", "parameters": [_KEY],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("ReviewRequest")}},
                        "description": "Content-Type must be application/json (an empty body is fine)"},
        "responses": {"200": _json(_ref("Alert"), "the alert, reviewed (the change persists)"),
                      **_errors(400, 401, 403, 404, 413, 415)}}}


def _cameras() -> dict[str, Any]:
    """The paths that change the running sources (only where the decoder registered a `CameraControl`)."""
    control = "the decoder runs in another process (404)"
    return {
        "/api/cameras": {"post": {
            "summary": "start a camera now (not written to the config file)", "operationId": "addCamera",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CameraRequest")}}},
            "responses": {"201": _json(_ref("CameraChange"), "the source started"),
                          **_errors(400, 401, 403, 404, 409, 413, 415, e404=control,
                                    e409="stream id in use, clashing with another source, or the decoder stopped")}}},
        "/api/cameras/{id}": {"delete": {
            "summary": "stop a source; its clips in flight are still scored, then its streams report ended "
                       "(detail: removed)", "operationId": "removeCamera",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "the source's stream id (percent-encoded or with its slashes)"}],
            "responses": {"200": _json(_ref("CameraChange"), "the source is stopping"),
                          **_errors(401, 403, 404, e404="no running source with this id, or " + control)}}},
    }


def document(*, cameras: bool = False) -> dict[str, Any]:
    """The OpenAPI document of the console API; with `cameras`, the endpoints that add and remove cameras too."""
    query = [
        {"name": "camera", "in": "query", "schema": {"type": "string"}, "description": "camera or exact stream id"},
        {"name": "kind", "in": "query", "schema": {"type": "string"}, "description": "novel, adversarial"},
        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": f"scored at or after: {_TIME}"},
        {"name": "until", "in": "query", "schema": {"type": "string"}, "description": f"scored before: {_TIME}"},
        {"name": "state", "in": "query", "schema": {"enum": ["open", "acknowledged", "dismissed"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    ]
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "clipwatch console API", "version": pipeline.__version__,
                 "description": "Alerts of a clipwatch run, their review state and the cameras' health. Errors are "
                                "JSON objects with a one-line `error`."},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/api/alerts": {"get": {
                "summary": "alerts, newest first", "operationId": "listAlerts", "parameters": query,
                "responses": {"200": _json(_ref("AlertList"), "matching alerts"), **_errors(400, 401)}}},
            "/api/alerts/{key}": {"get": {
                "summary": "one alert with its layer scores and logged body", "operationId": "getAlert",
                "parameters": [_KEY],
                "responses": {"200": _json(_ref("AlertDetail"), "the alert"), **_errors(401, 404)}}},
            "/api/alerts/{key}/thumbnail": {"get": {
                "summary": "the alert's thumbnail", "operationId": "getThumbnail", "parameters": [_KEY],
                "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}, **_errors(401, 404)}}},
            "/api/alerts/{key}/ack": _review("ack", "acknowledged"),
            "/api/alerts/{key}/dismiss": _review("dismiss", "dismissed"),
            "/api/alerts/{key}/reopen": _review("reopen", "open again"),
            "/api/cameras": {"get": {
                "summary": "every camera: health state, verdict counts, alerts", "operationId": "listCameras",
                "responses": {"200": _json({"type": "object", "required": ["cameras"], "properties": {
                    "cameras": {"type": "array", "items": _ref("Camera")}}}, "cameras by name"), **_errors(401)}}},
            "/api/events": {"get": {
                "summary": "Server-Sent Events: `alert` (a new alert), `review` (an alert acknowledged, dismissed "
                           "or reopened; data: the alert), `camera` (a camera's state or counts changed), `reset` "
                           "(refetch everything). Send Last-Event-ID to resume.",
                "operationId": "events",
                "responses": {"200": {"description": "an endless event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(401, 503)}}},
            "/api/openapi.json": {"get": {
                "summary": "this document", "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors(401)}}},
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description":
                                           "required when the console has a token (or its cookie, set by "
                                           "opening /?token=...)"}},
        },
    }
    if cameras:
        for path, operations in _cameras().items():
            spec["paths"].setdefault(path, {}).update(operations)
    return spec
