"""Real processes for fault tests and fault benchmarks: a private redis-server, ``gnaq serve``, a TCP proxy.

Shared by ``tests/`` and ``bench/``, so a fault is injected the same way where it is asserted and where it is
measured. Nothing here touches the machine's shared Redis: each ``RedisServer`` runs on its own free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

KEY = "fault-key"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on a free port; AOF (``appendfsync everysec``, as deployed) in a temp dir."""

    def __init__(self, *, aof: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="gnaq-redis-")
        self.aof = aof
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> float:
        """Start (again, on the same port and data) and wait until it answers; returns the time it did."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes" if self.aof else "no", "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL)
        return self.wait_answering()

    def wait_answering(self, timeout: float = 30) -> float:
        client, deadline = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2), \
            time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return time.monotonic()
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer") from None
                time.sleep(0.01)
            finally:
                client.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.resume()
            self.stop()
        for path in Path(self.dir).rglob("*"):
            if path.is_file():
                path.unlink()


@contextlib.contextmanager
def redis_server(*, aof: bool = True) -> Iterator[RedisServer]:
    """A private redis-server for the block."""
    server = RedisServer(aof=aof)
    try:
        yield server
    finally:
        server.close()


class Service:
    """``gnaq serve`` in its own process (the real HTTP server), restartable on the same port."""

    def __init__(self, model_dir: Path, env: dict[str, str], *, port: int | None = None) -> None:
        self.model_dir, self.port = model_dir, port or free_port()
        self.env = {**os.environ, "GNAQ_API_KEYS": KEY, "GNAQ_RELOAD_POLL_SECONDS": "0", **env}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(self.port),
                                         "--model-dir", str(self.model_dir), "--log-level", "warning"],
                                        env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gnaq serve exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("gnaq serve did not become ready")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def peak_rss_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")


@contextlib.contextmanager
def serving(model_dir: Path, env: dict[str, str]) -> Iterator[Service]:
    """``gnaq serve`` on a free port until the block ends, ready when the block starts."""
    service = Service(model_dir, env)
    service.start()
    try:
        yield service
    finally:
        service.stop()


class DropReplies:
    """A TCP proxy in front of Redis that can cut a connection after a command reached Redis, before its reply.

    While ``armed`` > 0, a connection whose client sent bytes containing ``marker`` has the next reply from
    Redis thrown away and both sides closed: the command ran (committed), the client never hears so. Each cut
    decrements ``armed``. A real network fault, not a mock: Redis and the client are the real ones.
    """

    def __init__(self, redis_port: int, marker: bytes) -> None:
        self.redis_port, self.marker = redis_port, marker
        self.port = free_port()
        self.armed = 0
        self.cut = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            client_writer.close()
            return
        pending = asyncio.Event()  # the marked command was forwarded: cut at its reply

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                if self.armed > 0 and self.marker in data:
                    pending.set()
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def downstream() -> None:
            while data := await redis_reader.read(65536):
                if pending.is_set() and self.armed > 0:
                    self.armed -= 1
                    self.cut += 1
                    client_writer.transport.abort()
                    redis_writer.transport.abort()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(upstream(), downstream())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def raw_request(port: int, head: bytes, body: bytes = b"", chunk: int = 1 << 16) -> tuple[bytes, float]:
    """Send ``head`` then ``body`` over a raw socket, reading the answer at the same time as a client that
    does not stop sending would; (the answer up to 64 KiB, seconds from the first byte sent to the first byte
    of the answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(head)
            for start in range(0, len(body), chunk):
                sock.sendall(body[start:start + chunk])

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(120)
    try:
        answer = sock.recv(65536)
        first = time.monotonic() - started
        sock.settimeout(0.5)
        with contextlib.suppress(OSError):
            while len(answer) < 65536 and (more := sock.recv(65536)):
                answer += more
    finally:
        sock.close()
        sender.join(30)
    return answer, first
