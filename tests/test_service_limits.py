"""Bounds before any work: ``gnaq serve`` refuses what it should without reading, parsing or holding it.

The key is checked before the body is read; a body over GNAQ_MAX_BODY_BYTES is refused by its
Content-Length or while it streams; nesting depth and batch length are checked on the raw bytes; uvicorn
bounds the request line and headers (GNAQ_MAX_HEADER_BYTES). Memory is the server process's peak RSS
(VmHWM), read from /proc before and after.
"""

import json

import httpx
import pytest
from harness import KEY, raw_request, serving

from contracts.versions import read_current

# The reproducer: 1,165,084 eight-deep nested lists, 21 MB.
NESTED = ("[" + ",".join(["[[[[[[[[1]]]]]]]]"] * 1165084) + "]").encode()
MIB = 1024


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    with serving(trained, {"REDIS_URL": "", "GNAQ_STATE_DIR": str(state)}) as service:
        httpx.post(f"{service.url}/interactions", json={"user_id": "x", "item_id": "y"},
                   headers={"X-API-Key": KEY})  # the route's first call warms its code paths
        yield service


def _post_head(length: int | None, key: str | None = None, extra: bytes = b"") -> bytes:
    head = b"POST /interactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra
    if key:
        head += f"X-API-Key: {key}\r\n".encode()
    head += f"Content-Length: {length}\r\n".encode() if length is not None else b"Transfer-Encoding: chunked\r\n"
    return head + b"\r\n"


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _problem(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    return json.loads(body)


def test_a_large_body_without_a_key_is_401_at_once_and_never_held(service):
    before = service.peak_rss_kib()
    answer, seconds = raw_request(service.port, _post_head(len(NESTED)), NESTED)
    assert _status(answer) == 401 and _problem(answer)["type"].endswith("/unauthorized")
    assert seconds < 1.0, f"401 after {seconds:.2f} s"
    assert service.peak_rss_kib() - before < 32 * MIB


def test_an_oversized_body_with_the_key_is_413_by_length_or_while_streaming(service):
    body = json.dumps([{"user_id": f"u{n}", "item_id": "1"} for n in range(900_000)]).encode()  # 33 MB, valid
    before = service.peak_rss_kib()
    answer, seconds = raw_request(service.port, _post_head(len(body), KEY), body)
    assert _status(answer) == 413 and _problem(answer)["max_bytes"] == 1 << 20 and seconds < 1.0
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                       for i in range(0, 4 << 20, 65536)) + b"0\r\n\r\n"  # 4 MiB, no Content-Length
    answer, seconds = raw_request(service.port, _post_head(None, KEY), chunked)
    assert _status(answer) == 413 and seconds < 2.0
    assert service.peak_rss_kib() - before < 32 * MIB


def test_depth_and_batch_length_are_refused_from_the_raw_bytes(service):
    deep = NESTED[: 1 << 19] + b"]"  # under the byte limit, nested eight deep
    answer, seconds = raw_request(service.port, _post_head(len(deep), KEY), deep)
    assert _status(answer) == 400 and "deeper than 4" in _problem(answer)["detail"] and seconds < 1.0
    many = json.dumps([{"user_id": "u", "item_id": "1"}] * 20_000).encode()  # 640 KB, 20x the batch limit
    answer, seconds = raw_request(service.port, _post_head(len(many), KEY), many)
    assert _status(answer) == 422 and "at most 1000 interactions" in _problem(answer)["detail"] and seconds < 1.0


def test_uvicorn_bounds_the_request_line_and_headers(service):
    """Refused before the app runs, so these two answers are uvicorn's text/plain (documented in README)."""
    before = service.peak_rss_kib()
    long_line = b"GET /recommend/" + b"a" * (64 << 20) + b" HTTP/1.1\r\nHost: t\r\n\r\n"  # 64 MiB request line
    answer, seconds = raw_request(service.port, long_line[:1 << 20], long_line[1 << 20:])
    assert answer.startswith(b"HTTP/1.1 400 ") and b"text/plain" in answer and seconds < 1.0
    headers = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    answer, seconds = raw_request(service.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n", headers * 65536 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and seconds < 1.0  # 64 MiB of headers
    assert service.peak_rss_kib() - before < 32 * MIB
    assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_the_model_still_answers_reads(service, trained):
    user = read_current(trained).user_ids[0]
    assert httpx.get(f"{service.url}/recommend/{user}").status_code == 200
