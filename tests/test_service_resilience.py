"""Redis going away and coming back: reads keep answering, readiness says degraded, then recovers."""

import shutil
import socket
import subprocess
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient

from contracts.versions import read_current
from service.core.config import Settings
from service.main import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int) -> subprocess.Popen:
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--enable-debug-command", "local"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_service_survives_a_redis_restart(model_dir):
    port = _free_port()
    server = _start_redis(port)
    user = read_current(model_dir).user_ids[0]
    settings = Settings(model_dir=model_dir, redis_url=f"redis://127.0.0.1:{port}/0", reload_poll_seconds=0,
                        redis_timeout_seconds=0.2, redis_retry_seconds=0.2)
    try:
        with TestClient(create_app(settings)) as client:
            client.get(f"/recommend/{user}")
            assert client.get(f"/recommend/{user}").json()["cached"] is True
            server.terminate()
            server.wait()
            down = [client.get(f"/recommend/{user}") for _ in range(3)]
            assert [r.status_code for r in down] == [200] * 3 and not any(r.json()["cached"] for r in down)
            assert client.get("/readyz").json()["store"]["status"] == "degraded"
            server = _start_redis(port)  # restarted, empty: the service reconnects by itself
            time.sleep(0.3)
            assert client.get("/readyz").json()["store"]["status"] == "ok"
            client.get(f"/recommend/{user}")
            assert client.get(f"/recommend/{user}").json()["cached"] is True
    finally:
        server.terminate()
        server.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_slow_redis_costs_at_most_its_timeout(model_dir):
    port = _free_port()
    server = _start_redis(port)
    users = read_current(model_dir).user_ids[:6]
    settings = Settings(model_dir=model_dir, redis_url=f"redis://127.0.0.1:{port}/0", reload_poll_seconds=0,
                        redis_timeout_seconds=0.2, redis_retry_seconds=5)
    try:
        with TestClient(create_app(settings)) as client:
            client.get(f"/recommend/{users[0]}")
            stall = threading.Thread(target=lambda: redis.Redis(port=port).execute_command("DEBUG", "SLEEP", "2"))
            stall.start()
            time.sleep(0.1)
            started = time.monotonic()
            answers = [client.get(f"/recommend/{user}") for user in users[1:]]  # none cached anywhere
            elapsed = time.monotonic() - started
            stall.join()
            assert [r.status_code for r in answers] == [200] * 5 and not any(r.json()["cached"] for r in answers)
            assert elapsed < 1.5  # one timeout (0.2 s), then the breaker skips Redis instead of waiting again
    finally:
        server.terminate()
        server.wait()
