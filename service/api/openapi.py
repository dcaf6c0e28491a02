"""What ``/openapi.json`` must say that FastAPI cannot infer: errors are problem+json, and the write's body.

Routes list their error statuses with ``problem_responses``; declaring 422 there also stops FastAPI from
adding its own (``application/json`` with a ``detail`` list, which this service never sends). ``install``
adds the problem schema to the components, generated from ``schemas.ProblemDetails``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.schemas import InteractionIn, ProblemDetails
from service.core.problems import MEDIA_TYPE

_COMPONENTS = "#/components/schemas/{model}"
_HEADERS = {  # sent with every problem of that status
    401: {"WWW-Authenticate": {"description": "the header that carries the key", "required": True,
                               "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each status answered with the problem schema (and its headers)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in descriptions.items():
        entry = {"description": description,
                 "content": {MEDIA_TYPE: {"schema": {"$ref": _COMPONENTS.format(model="Problem")}}}}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


def interactions_body(max_items: int) -> dict[str, Any]:
    """``requestBody`` of ``POST /interactions`` (read by the route itself, so FastAPI does not see it)."""
    one = {"$ref": _COMPONENTS.format(model="InteractionIn")}
    batch = {"type": "array", "items": one, "minItems": 1, "maxItems": max_items}
    return {"required": True, "description": f"one interaction or a list of 1 to {max_items}",
            "content": {"application/json": {"schema": {"anyOf": [one, batch]}}}}


def install(app: FastAPI) -> None:
    """Serve the generated spec with the schemas the routes refer to by name."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, model in (("Problem", ProblemDetails), ("InteractionIn", InteractionIn)):
                schema = model.model_json_schema(ref_template=_COMPONENTS)
                schemas.update(schema.pop("$defs", {}))
                schemas[name] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
