"""A JSON request body read under bounds: nothing larger, deeper or longer than allowed is ever built.

FastAPI would read and parse a declared body before any dependency runs, so an unauthenticated client could
make the process parse anything it sends. The write route therefore declares no body parameter: it checks
the key first, then calls ``read_json``, which refuses an oversized body by its ``Content-Length`` or as soon
as the streamed bytes pass the limit (413), and scans the raw bytes for nesting depth and the length of a
top-level list, stopping at the first excess, before ``json.loads`` runs.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from service.core.problems import Problem

MAX_DEPTH = 4  # an interaction batch needs 2 (a list of objects); 4 lets a slightly wrong body get field errors
# JSON strings (skipped whole, so brackets inside them do not count) and the structural characters.
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},]', re.DOTALL)
_OPEN, _CLOSE, _COMMA = frozenset(b"[{"), frozenset(b"]}"), ord(",")
_TOKENS_PER_ITEM = 11  # {"user_id":"u","item_id":"i","timestamp":"t"} and a comma after it


def _too_many(limit: int) -> Problem:
    """The 422 for a list longer than ``limit``, shaped like every validation error."""
    message = f"send at most {limit} interactions in one post (GNAQ_MAX_BATCH)"
    return Problem(422, "validation-error", f"body: {message}; nothing was recorded",
                   errors=[{"location": "body", "message": message, "type": "too_long"}])


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or a 413 problem once it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the body is larger than {limit} bytes (GNAQ_MAX_BODY_BYTES); "
                   "nothing was recorded: send fewer interactions per post", max_bytes=limit)


def check_shape(body: bytes, max_items: int) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` (400), or more than ``max_items`` interactions (422): a
    top-level list longer than that, or more JSON tokens than that many interactions can hold."""
    depth = commas = 0
    top_list = body.lstrip()[:1] == b"["
    for count, token in enumerate(_TOKENS.finditer(body)):
        char = body[token.start()]
        if char in _OPEN:
            depth += 1
            if depth > MAX_DEPTH:
                raise Problem(400, "malformed-body", f"the body nests deeper than {MAX_DEPTH} levels; "
                              "nothing was recorded")
        elif char in _CLOSE:
            depth -= 1
        elif char == _COMMA and depth == 1 and top_list:
            commas += 1
        if commas >= max_items or count > _TOKENS_PER_ITEM * max_items + 2:
            raise _too_many(max_items)


async def read_json(request: Request, *, max_bytes: int, max_items: int) -> Any:
    """The body as JSON, read and parsed within the bounds above."""
    media = request.headers.get("content-type", "application/json").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send the body as application/json, not {media!r}")
    body = await read_body(request, max_bytes)
    check_shape(body, max_items)
    try:
        return json.loads(body)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise Problem(400, "malformed-body", f"the body is not valid JSON: {error}; nothing was recorded") from None
