"""The scale-out benchmark's pooling of several wrk runs: replicas' misses never share a user, throughput adds up,
latency is bounded by the worst replica's."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale_out  # noqa: E402


class _Log:
    breaker_trips = 0


def test_two_replicas_are_pooled_and_walk_disjoint_users(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_wrk(url, connections, seconds, script, script_args):
        calls.append((url, connections, script_args))
        first = url.startswith("http://a")
        return {"rps": 100.0 if first else 60.0, "requests": 500 if first else 300, "p50_ms": 2.0 if first else 3.0,
                "p99_ms": 9.0 if first else 7.0, "non_2xx": 1}

    urls = ["http://a", "http://b"]
    monkeypatch.setattr(scale_out, "run_wrk", fake_wrk)
    monkeypatch.setattr(scale_out, "cpu_seconds", lambda pid: 0.0)
    monkeypatch.setattr(scale_out, "PIDS", dict.fromkeys(urls, 1))
    monkeypatch.setattr(scale_out, "LOGS", dict.fromkeys(urls, _Log()))
    row = scale_out.run_split(urls, "", 64, 1, Path("walk.lua"), walked=1000)
    assert sorted(calls) == [("http://a", 32, ("1000", "2")), ("http://b", 32, ("1001", "2"))]
    assert (row["rps"], row["requests"], row["non_2xx"]) == (160.0, 800, 2)
    assert (row["p50_ms"], row["p99_ms"]) == (3.0, 9.0)  # the worse replica's: an upper bound of the pooled one
    # Replica a walks users 1002, 1004, ... up to 1000 + 2 * (500 + 32 in flight): the next run starts past both.
    assert row["span"] >= 2 * (500 + 32)
    assert "| cache miss | 64 | 2 replicas, shared Redis | 160 |" in scale_out.markdown(
        {"model": "v", "n_users": 1, "n_items": 1, "dim": 1, "bits": 2, "index": "float", "rounds": 1, "seconds": 1,
         "machine": "m", "rows": [{"setup": "2 replicas, shared Redis", "scenario": "cache miss", "connections": 64,
                                   **row, "breaker_trips": 0}]})
