"""The service as users run it: ``gnaq serve`` in its own process, a real HTTP server, restarts."""

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
import redis

from contracts.versions import read_current

KEY = "process-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_dir, env):
    """``gnaq serve`` on a free port until the block ends; yields its base URL once it is ready."""
    port = _free_port()
    env = {**os.environ, "GNAQ_API_KEYS": KEY, "GNAQ_RELOAD_POLL_SECONDS": "0", **env}
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port),
                                "--model-dir", str(model_dir), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "gnaq serve exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gnaq serve did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _post_concurrently(url, bodies):
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        return await asyncio.gather(*(client.post("/interactions", json=b) for b in bodies))


@pytest.mark.parametrize("backend", ["redis", "embedded"])
def test_100_concurrent_posts_are_all_kept_across_a_restart(backend, model_dir, tmp_path, request):
    artifact = read_current(model_dir)
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    env = {"REDIS_URL": redis_url, "GNAQ_STATE_DIR": str(tmp_path / "state")}  # no REDIS_URL: embedded store
    users = [f"u{n}" for n in range(10)]  # new users, 10 posts each, one item per post
    bodies = [{"user_id": u, "item_id": artifact.item_ids[10 * n + j]} for n, u in enumerate(users) for j in range(10)]
    with serving(model_dir, env) as url:
        replies = asyncio.run(_post_concurrently(url, bodies))
        assert [r.status_code for r in replies] == [200] * 100
    if backend == "redis":
        assert redis.Redis.from_url(redis_url).xlen("gnaq:interactions") == 100
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "interactions.sqlite3")) as db:
            assert db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 100
    with serving(model_dir, env) as url:  # a fresh process sees every accepted interaction
        for n, user in enumerate(users):
            recs = httpx.get(f"{url}/recommend/{user}", params={"k": 100}).json()
            assert not {artifact.item_ids[10 * n + j] for j in range(10)} & {i["item_id"] for i in recs["items"]}
            again = httpx.post(f"{url}/interactions", headers={"X-API-Key": KEY},
                               json={"user_id": user, "item_id": artifact.item_ids[0]}).json()
            assert again["users"][0]["generation"] == 11
