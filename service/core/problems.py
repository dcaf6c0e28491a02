"""RFC 9457 problem details: every 4xx and 5xx leaves as ``application/problem+json``.

Routes raise ``Problem`` (or let the domain errors mapped in ``install`` propagate); validation
errors list each bad field; anything unexpected is logged with its traceback here and answered with
a generic 500 that reveals nothing of the process.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://gnaq-rec.dev/problems/"


class Problem(Exception):
    """An error answered as problem details: ``type`` is a slug under ``TYPE_BASE``."""

    def __init__(self, status: int, slug: str, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.title = title or HTTPStatus(status).phrase
        self.headers, self.extensions = headers or {}, extensions


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = {"type": TYPE_BASE + problem.slug, "title": problem.title, "status": problem.status,
            "detail": problem.detail, "instance": request.url.path, **problem.extensions}
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


def install(app: FastAPI, mapped: dict[type[Exception], Any]) -> None:
    """Register handlers: ``Problem``, HTTP errors, validation errors, ``mapped`` domain errors, the rest."""

    async def on_problem(request: Request, error: Problem) -> JSONResponse:
        return problem_response(request, error)

    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "http-error")
        detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
        return problem_response(request, Problem(error.status_code, slug, detail, headers=error.headers))

    async def on_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
                  for e in error.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem_response(request, Problem(422, "validation-error", detail, errors=errors))

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, Problem(500, "internal-error", "the server failed to answer; "
                                                 "the error was logged"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for error_type, to_problem in mapped.items():
        async def on_mapped(request: Request, error: Exception, to_problem=to_problem) -> JSONResponse:
            return problem_response(request, to_problem(error))
        app.add_exception_handler(error_type, on_mapped)
    app.add_exception_handler(Exception, on_unexpected)
