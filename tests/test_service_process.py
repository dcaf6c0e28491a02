"""The service as users run it: ``gnaq serve`` in its own process, a real HTTP server, restarts."""

import asyncio
import contextlib
import sqlite3

import httpx
import pytest
import redis
from harness import KEY, serving

from contracts.versions import read_current


async def _post_concurrently(url, bodies):
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        return await asyncio.gather(*(client.post("/interactions", json=b) for b in bodies))


@pytest.mark.parametrize("backend", ["redis", "embedded"])
def test_100_concurrent_posts_are_all_kept_across_a_restart(backend, model_dir, tmp_path, request):
    artifact = read_current(model_dir)
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    env = {"REDIS_URL": redis_url, "GNAQ_STATE_DIR": str(tmp_path / "state"),  # no REDIS_URL: embedded store
           "GNAQ_REDIS_TIMEOUT_SECONDS": "2"}  # durability is the point here, not latency on a loaded machine
    users = [f"u{n}" for n in range(10)]  # new users, 10 posts each, one item per post
    bodies = [{"user_id": u, "item_id": artifact.item_ids[10 * n + j]} for n, u in enumerate(users) for j in range(10)]
    with serving(model_dir, env) as service:
        replies = asyncio.run(_post_concurrently(service.url, bodies))
        assert [r.status_code for r in replies] == [200] * 100
    if backend == "redis":
        assert redis.Redis.from_url(redis_url).xlen("gnaq:interactions") == 100
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "interactions.sqlite3")) as db:
            assert db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 100
    with serving(model_dir, env) as service:  # a fresh process sees every accepted interaction
        url = service.url
        for n, user in enumerate(users):
            recs = httpx.get(f"{url}/recommend/{user}", params={"k": 100}).json()
            assert not {artifact.item_ids[10 * n + j] for j in range(10)} & {i["item_id"] for i in recs["items"]}
            again = httpx.post(f"{url}/interactions", headers={"X-API-Key": KEY},
                               json={"user_id": user, "item_id": artifact.item_ids[0]}).json()
            assert again["users"][0]["generation"] == 11


async def _read_concurrently(url: str, users: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.get(f"/recommend/{u}") for u in users))


def test_more_concurrent_misses_than_redis_connections_never_trip_the_breaker(model_dir, redis_url):
    """64 misses at once over a pool of 4: reads wait for a free connection, surplus cache writes are dropped,
    and no store call fails (redis-py's default pool would answer "Too many connections" and open the breaker)."""
    users = read_current(model_dir).user_ids[:64]
    env = {"REDIS_URL": redis_url, "GNAQ_REDIS_CONNECTIONS": "4", "GNAQ_REDIS_TIMEOUT_SECONDS": "2"}
    with serving(model_dir, env) as service:
        replies = asyncio.run(_read_concurrently(service.url, users))
        assert [r.status_code for r in replies] == [200] * 64
        metrics = httpx.get(f"{service.url}/metrics").text
    failed = [line for line in metrics.splitlines() if line.startswith("gnaq_store_unavailable_total{")
              and "backlog" not in line and not line.endswith(" 0.0")]
    assert failed == []
