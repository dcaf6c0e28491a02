"""Fault runs against real processes: ``gnaq serve`` and a private redis-server with AOF (issue 17, section 6).

Scenarios (each prints its rows of the fault-run table; ``--json`` keeps them all):

* ``writes``: N posts at C concurrent clients, each one interaction with its own Idempotency-Key; partway
  the API is killed with SIGKILL and restarted, then (a second N) Redis is. A post that fails (connection
  error, 503) is retried with the same key until it is acknowledged. Then the log is read back: lost =
  acknowledged events absent from the log, duplicates = events logged more than once.
* ``reads``: C readers of trained and cold-start users (posted first) while Redis is SIGSTOPped for 5 s, then
  killed and restarted: non-2xx, false 404s (a cold-start user answered as unknown) and latency per phase.
* ``recovery``: the issue's reproducer (64 concurrent posts, Redis restarted, 10 s, 64 posts), then R rounds
  of posts at C clients across a kill -9 and restart of Redis: the time from Redis answering again to the
  first acknowledged post, and the last 503 of a post sent after that (the late-503 window).
* ``body``: the issue's 21 MB nested body without a key, and a 33 MB valid batch with it: time to the
  answer and growth of the server's peak RSS.

Usage: python bench/faults.py MODEL_DIR [--scenario all] [--posts 10000] [--clients 64] [--json runs/faults.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
from harness import KEY, RedisServer, Service, raw_request

from contracts.versions import read_current

AUTH = {"X-API-Key": KEY}


def _p(values: list[float], q: float) -> float:
    return round(1000 * statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 1 else float("nan")


async def _post_until_acknowledged(client: httpx.AsyncClient, body: dict, key: str, log: Counter) -> None:
    """One post, retried with the same key until a 200 (connection errors and 503s are retried, 2 minutes)."""
    deadline = time.monotonic() + 120
    for attempt in itertools.count():
        if time.monotonic() > deadline:
            raise RuntimeError(f"post {key} never acknowledged")
        try:
            reply = await client.post("/interactions", json=body, headers={**AUTH, "Idempotency-Key": key})
            log[f"{'first' if attempt == 0 else 'retry'} {reply.status_code}"] += 1
            if reply.status_code == 200:
                log["replayed"] += reply.headers.get("Idempotent-Replayed") == "true"
                return
            if reply.status_code == 503:
                log[f"503 outcome {reply.json()['outcome']}"] += 1
        except httpx.HTTPError as error:
            log[f"{'first' if attempt == 0 else 'retry'} {type(error).__name__}"] += 1
        await asyncio.sleep(0.05)


async def _posts_with_a_kill(service: Service, redis: RedisServer, items: list[str], n: int, clients: int,
                             tag: str, victim: str) -> Counter:
    log: Counter = Counter()
    queue = list(range(n))
    acknowledged = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal acknowledged
        while queue:
            i = queue.pop()
            await _post_until_acknowledged(client, {"user_id": f"{tag}-{i}", "item_id": items[i % len(items)]},
                                           f"{tag}-{i}", log)
            acknowledged += 1

    async def killer() -> None:
        while acknowledged < n // 3:
            await asyncio.sleep(0.01)
        if victim == "api":
            await asyncio.to_thread(service.kill)
            await asyncio.to_thread(service.start)
        else:
            await asyncio.to_thread(redis.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis.start)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as client:
        await asyncio.gather(killer(), *(worker(client) for _ in range(clients)))
    return log


def writes(model_dir: Path, posts: int, clients: int) -> list[dict]:
    items = read_current(model_dir).item_ids
    rows = []
    redis = RedisServer(aof=True)
    service = Service(model_dir, {"REDIS_URL": redis.url})
    service.start()
    try:
        for victim in ("api", "redis"):
            started = time.monotonic()
            log = asyncio.run(_posts_with_a_kill(service, redis, items, posts, clients, victim, victim))
            entries = [f for _, f in redis.client().xrange("gnaq:interactions") if f[b"user"].startswith(
                f"{victim}-".encode())]
            events = Counter(f[b"event"].decode() for f in entries)
            expected = {f"client:{victim}-{i}#0" for i in range(posts)}
            rows.append({"scenario": f"{posts:,} posts, {clients} clients, kill -9 of the {victim}",
                         "acknowledged": posts, "present": len(expected & events.keys()),
                         "lost": len(expected - events.keys()),
                         "duplicates": sum(c - 1 for c in events.values() if c > 1),
                         "first-attempt failures": sum(v for k, v in log.items()
                                                       if k.startswith("first") and not k.endswith("200")),
                         "retries acknowledged as replays": log["replayed"],
                         "seconds": round(time.monotonic() - started, 1), "log": dict(log)})
    finally:
        service.stop()
        redis.close()
    return rows


async def _read_load(url: str, users: list[str], clients: int, phases: list[tuple[str, object, float]]) -> dict:
    """Readers run through ``phases`` (name, action at its start, seconds). A request belongs to the phase in
    which it was answered: (status, latency, user, seconds from the end of the phase's action to its start)."""
    replies: list[tuple[int, float, float, str]] = []  # status, started, answered, user
    bounds: list[tuple[str, float, float]] = []  # name, action started, action done
    done = False

    async def reader(client: httpx.AsyncClient, offset: int) -> None:
        n = offset
        while not done:
            user, n = users[n % len(users)], n + clients
            started = time.monotonic()
            try:
                status = (await client.get(f"/recommend/{user}")).status_code
            except httpx.HTTPError:
                status = 0
            replies.append((status, started, time.monotonic(), user))

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        tasks = [asyncio.create_task(reader(client, i)) for i in range(clients)]
        for name, action, seconds in phases:
            began = time.monotonic()
            if action is not None:
                await asyncio.to_thread(action)
            bounds.append((name, began, time.monotonic()))
            await asyncio.sleep(seconds)
        done = True
        await asyncio.gather(*tasks)
    results: dict[str, list[tuple[int, float, str, float]]] = {name: [] for name, _, _ in bounds}
    for status, started, answered, user in replies:
        name, _, action_done = next(b for b in reversed(bounds) if b[1] <= answered)
        results[name].append((status, answered - started, user, started - action_done))
    return results


def reads(model_dir: Path, clients: int) -> list[dict]:
    artifact = read_current(model_dir)
    trained, cold = list(artifact.user_ids[:200]), [f"cold-{n}" for n in range(50)]
    redis = RedisServer(aof=True)
    service = Service(model_dir, {"REDIS_URL": redis.url})
    service.start()
    try:
        posts = [{"user_id": u, "item_id": artifact.item_ids[n]} for n, u in enumerate(cold)]
        httpx.post(f"{service.url}/interactions", headers=AUTH, json=posts).raise_for_status()

        def restart() -> None:
            redis.kill()
            time.sleep(2.0)
            redis.start()

        phases = [("before", None, 5.0), ("Redis SIGSTOP (5 s)", redis.pause, 5.0),
                  ("after SIGCONT", redis.resume, 5.0), ("Redis kill -9, down 2 s, restarted", restart, 0.0),
                  ("after restart", None, 5.0)]
        results = asyncio.run(_read_load(service.url, trained + cold, clients, phases))
    finally:
        service.stop()
        redis.close()
    rows = []
    for name, replies in results.items():
        statuses = Counter(s for s, _, _, _ in replies)
        rows.append({"phase": name, "requests": len(replies),
                     "non-2xx": sum(v for k, v in statuses.items() if k != 200), "statuses": dict(statuses),
                     "false 404": sum(1 for s, _, u, _ in replies if s == 404 and u.startswith("cold-")),
                     "last non-2xx sent (s after the phase's action)": max(
                         (round(at, 3) for s, _, _, at in replies if s != 200), default=None),
                     "p50 ms": _p([t for _, t, _, _ in replies], 50), "p99 ms": _p([t for _, t, _, _ in replies], 99)})
    return rows


async def _posts_around_a_restart(url: str, redis: RedisServer, items: list[str], clients: int, tag: str) -> dict:
    replies: list[tuple[float, float, int]] = []  # sent, answered, status
    up = float("inf")
    done = False

    async def poster(client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not done:
            sent = time.monotonic()
            try:
                status = (await client.post("/interactions", headers=AUTH, json={
                    "user_id": f"{tag}-{worker}-{n}", "item_id": items[n % len(items)]})).status_code
            except httpx.HTTPError:
                status = 0
            replies.append((sent, time.monotonic(), status))
            n += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        tasks = [asyncio.create_task(poster(client, w)) for w in range(clients)]
        await asyncio.sleep(2.0)
        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(2.0)
        up = await asyncio.to_thread(redis.start)  # the moment PING is answered again
        await asyncio.sleep(5.0)
        done = True
        await asyncio.gather(*tasks)
    late = [answered - up for sent, answered, status in replies if status != 200 and sent >= up]
    first_ok = min((answered for sent, answered, status in replies if status == 200 and sent >= up - 1), default=None)
    return {"first 200 after Redis answered (s)": round(max(0.0, first_ok - up), 3) if first_ok else None,
            "non-2xx sent after Redis answered": len(late),
            "late-503 window (s)": round(max(late), 3) if late else 0.0}


def recovery(model_dir: Path, clients: int, rounds: int) -> list[dict]:
    items = read_current(model_dir).item_ids
    redis = RedisServer(aof=True)
    service = Service(model_dir, {"REDIS_URL": redis.url})
    service.start()
    rows = []
    try:
        async def burst(tag: str) -> list[int]:
            async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=30) as client:
                replies = await asyncio.gather(*(client.post("/interactions", json={
                    "user_id": f"{tag}-{n}", "item_id": items[n]}) for n in range(64)))
            return [r.status_code for r in replies]

        asyncio.run(burst("repro-before"))
        redis.kill()
        redis.start()
        time.sleep(10)
        after = Counter(asyncio.run(burst("repro-after")))
        rows.append({"scenario": "reproducer: 64 posts, Redis restarted, 10 s, 64 posts", "statuses": dict(after)})
        for r in range(rounds):
            result = asyncio.run(_posts_around_a_restart(service.url, redis, items, clients, f"round{r}"))
            rows.append({"scenario": f"posts at {clients} clients across kill -9 + restart, round {r + 1}", **result})
    finally:
        service.stop()
        redis.close()
    return rows


def body(model_dir: Path) -> list[dict]:
    nested = ("[" + ",".join(["[[[[[[[[1]]]]]]]]"] * 1165084) + "]").encode()
    batch = json.dumps([{"user_id": f"u{n}", "item_id": "1"} for n in range(1_500_000)]).encode()
    redis = RedisServer(aof=False)
    service = Service(model_dir, {"REDIS_URL": redis.url})
    service.start()
    rows = []
    try:
        for name, payload, key in (("21 MB nested body, no key", nested, None), ("55 MB valid batch, key", batch, KEY)):
            before = service.peak_rss_kib()
            head = (b"POST /interactions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                    + (f"X-API-Key: {key}\r\n".encode() if key else b"")
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode())
            answer, seconds = raw_request(service.port, head, payload)
            rows.append({"request": name, "status": int(answer.split(b" ", 2)[1]),
                         "seconds to answer": round(seconds, 4),
                         "peak RSS growth (KiB)": service.peak_rss_kib() - before,
                         "peak RSS (MiB)": round(service.peak_rss_kib() / 1024)})
    finally:
        service.stop()
        redis.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--scenario", choices=["all", "writes", "reads", "recovery", "body"], default="all")
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = {"writes": lambda: writes(args.model_dir, args.posts, args.clients),
            "reads": lambda: reads(args.model_dir, 16),
            "recovery": lambda: recovery(args.model_dir, 16, args.rounds),
            "body": lambda: body(args.model_dir)}
    out = {}
    for name, run in runs.items():
        if args.scenario in ("all", name):
            out[name] = run()
            for row in out[name]:
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
