"""The service through its lifespan (FastAPI TestClient), against the real Redis and the embedded store."""

import contextlib
import re
import sqlite3
import time

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from contracts.artifact import CURRENT_FILE
from contracts.versions import add_version, read_current
from service.core.config import Settings
from service.main import create_app

KEY = "test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(params=["redis", "embedded"])
def settings(request, model_dir, tmp_path):
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Settings(model_dir=model_dir, redis_url=redis_url, state_dir=tmp_path / "state", api_keys=[KEY],
                    reload_poll_seconds=0.1, max_k=50, max_batch=50, max_body_bytes=2048)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _first_user(model_dir):
    artifact = read_current(model_dir)
    return artifact, artifact.user_ids[0]


def _metric(client, name):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _assert_problem(response, status, slug):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"].endswith("/" + slug) and body["detail"]
    assert "Traceback" not in response.text
    return body


def test_recommend_excludes_training_items_and_caches(client, model_dir):
    artifact, user = _first_user(model_dir)
    first = client.get(f"/recommend/{user}", params={"k": 10})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["user_id"] == user and body["model_version"] == artifact.version
    assert len(body["items"]) == 10 and body["cached"] is False
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    trained = {artifact.item_ids[i] for u, i in artifact.train.pairs() if u == 0}
    assert not trained & {i["item_id"] for i in body["items"]}
    second = client.get(f"/recommend/{user}", params={"k": 10}).json()
    assert second["cached"] is True and second["items"] == body["items"]
    assert _metric(client, "gnaq_cache_hits_total") == 1 and _metric(client, "gnaq_cache_misses_total") == 1


def test_an_interaction_invalidates_the_cache_and_is_excluded_next(client, model_dir):
    _, user = _first_user(model_dir)
    before = client.get(f"/recommend/{user}").json()
    assert client.get(f"/recommend/{user}").json()["cached"] is True
    top = before["items"][0]["item_id"]
    posted = client.post("/interactions", json={"user_id": user, "item_id": top}, headers=AUTH)
    assert posted.status_code == 200, posted.text
    assert posted.json()["users"] == [{"user_id": user, "generation": 1, "new_user": False, "interactions": 1}]
    after = client.get(f"/recommend/{user}").json()
    assert after["cached"] is False and top not in {i["item_id"] for i in after["items"]}
    assert client.get(f"/recommend/{user}").json()["cached"] is True


def test_a_post_nudges_a_known_users_list_instead_of_rebuilding_it(client, model_dir):
    _, user = _first_user(model_dir)
    before = client.get(f"/recommend/{user}", params={"k": 20}).json()["items"]
    top = before[0]["item_id"]
    assert client.post("/interactions", json={"user_id": user, "item_id": top}, headers=AUTH).status_code == 200
    after = client.get(f"/recommend/{user}", params={"k": 20}).json()["items"]
    # The trained vector plus one item: scores keep their scale and most of the list stays.
    assert 0.7 < after[0]["score"] / before[1]["score"] < 1.3
    assert len({i["item_id"] for i in after} & {i["item_id"] for i in before[1:]}) >= 10


def test_cold_start_user_is_created_by_its_first_interactions(client, model_dir):
    artifact, _ = _first_user(model_dir)
    _assert_problem(client.get("/recommend/brand-new"), 404, "unknown-user")
    items = artifact.item_ids[:3]
    posted = client.post("/interactions", headers=AUTH,
                         json=[{"user_id": "brand-new", "item_id": i, "timestamp": 1700000000} for i in items])
    assert posted.status_code == 200 and posted.json()["users"][0]["new_user"] is True
    recs = client.get("/recommend/brand-new", params={"k": 20}).json()
    assert len(recs["items"]) == 20 and not set(items) & {i["item_id"] for i in recs["items"]}


def test_an_unknown_item_is_accepted_logged_and_excluded(client, settings, model_dir):
    """Issue 20: an item the model does not know is logged like any other, folded in, and never recommended to
    the user who posted it."""
    artifact, user = _first_user(model_dir)
    batch = [{"user_id": user, "item_id": artifact.item_ids[0]}, {"user_id": user, "item_id": "no-such-item"}]
    posted = client.post("/interactions", json=batch, headers=AUTH)
    assert posted.status_code == 200 and posted.json()["users"][0]["generation"] == 1
    assert [item for item, _ in _logged(settings, user)] == [artifact.item_ids[0], "no-such-item"]
    assert client.get("/items/no-such-item/similar").status_code == 200
    recs = client.get(f"/recommend/{user}", params={"k": 50}).json()["items"]
    assert not {"no-such-item", artifact.item_ids[0]} & {i["item_id"] for i in recs}


def test_similar_items(client, model_dir):
    artifact, _ = _first_user(model_dir)
    item = artifact.item_ids[5]
    body = client.get(f"/items/{item}/similar", params={"k": 7}).json()
    assert len(body["items"]) == 7 and item not in {i["item_id"] for i in body["items"]}
    _assert_problem(client.get("/items/nope/similar"), 404, "unknown-item")


def test_hot_reload_swaps_versions_and_refuses_a_corrupt_one(client, model_dir):
    artifact, user = _first_user(model_dir)
    old = artifact.version
    assert client.get(f"/recommend/{user}").json()["model_version"] == old
    add_version(model_dir, artifact, version="v2")  # published: the poller picks it up
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["model_version"] != "v2":
        assert time.monotonic() < deadline, "the new CURRENT was not picked up"
        time.sleep(0.05)
    swapped = client.get(f"/recommend/{user}").json()
    assert swapped["model_version"] == "v2" and swapped["cached"] is False  # old cache never served
    assert _metric(client, "gnaq_model_reloads_total") == 2
    assert _metric(client, 'gnaq_model_info{bits="2",index="float",method="gnaq",version="v2"}') == 1

    bad = add_version(model_dir, artifact, version="v3", publish=False)
    codes = bad / "item_codes.bin"
    data = bytearray(codes.read_bytes())
    data[0] ^= 0xFF
    codes.write_bytes(bytes(data))
    (model_dir / CURRENT_FILE).write_text("v3\n")
    body = _assert_problem(client.post("/admin/reload", headers=AUTH), 409, "artifact-refused")
    assert body["detail"].startswith("version v3 refused: v3/item_codes.bin is corrupt")
    assert "still serving v2" in body["detail"] and str(model_dir.parent) not in body["detail"]
    assert client.get(f"/recommend/{user}").json()["model_version"] == "v2"
    failures = _metric(client, "gnaq_model_reload_failures_total")
    assert failures in (1, 2)  # the reload, and the poller if it saw v3 first
    time.sleep(0.3)  # the poller does not retry (and recount) the refused version
    assert _metric(client, "gnaq_model_reload_failures_total") == failures

    (model_dir / CURRENT_FILE).write_text(f"{old}\n")
    assert client.post("/admin/reload", headers=AUTH).json() == {"reloaded": True, "model_version": old}


@pytest.mark.parametrize("kind", ["float", "codes"])
def test_service_top_k_equals_the_offline_evaluators(kind, model_dir, tmp_path):
    """Same artifact, same users: the served top-20 is the offline full ranking's top-20."""
    artifact = read_current(model_dir)
    users, items = artifact.user.dequantize().astype(np.float64), artifact.item.dequantize().astype(np.float64)
    scores = users @ items.T
    scores[artifact.train.pairs()[:, 0], artifact.train.pairs()[:, 1]] = -np.inf
    settings = Settings(model_dir=model_dir, state_dir=tmp_path, index=kind, reload_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        identical = 0
        for row in range(0, len(artifact.user_ids), 3):  # 315 users
            served = client.get(f"/recommend/{artifact.user_ids[row]}", params={"k": 20}).json()["items"]
            served_rows = [artifact.item_ids.index(i["item_id"]) for i in served]
            offline = np.argsort(-scores[row], kind="stable")[:20]
            identical += served_rows == offline.tolist()
            # Any difference must be a tie at float32 precision: same scores, rank by rank.
            np.testing.assert_allclose(scores[row, served_rows], scores[row, offline], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose([i["score"] for i in served], scores[row, served_rows], rtol=1e-5, atol=1e-6)
        assert identical >= 0.97 * len(range(0, len(artifact.user_ids), 3))


def test_every_error_is_problem_json(client, settings):
    _assert_problem(client.get("/nope"), 404, "not-found")
    _assert_problem(client.put("/healthz"), 405, "method-not-allowed")
    _assert_problem(client.get("/recommend/1", params={"k": 0}), 422, "validation-error")
    _assert_problem(client.get("/recommend/1", params={"k": "ten"}), 422, "validation-error")
    body = _assert_problem(client.get("/recommend/1", params={"k": 51}), 422, "validation-error")
    assert body["detail"] == "query.k: Input should be less than or equal to 50"
    _assert_problem(client.post("/interactions", json={"user_id": "1"}), 401, "unauthorized")
    _assert_problem(client.post("/interactions", json={"user_id": "1"}, headers={"X-API-Key": "wrong"}),
                    401, "unauthorized")
    body = _assert_problem(client.post("/interactions", json={"user_id": "1"}, headers=AUTH), 422, "validation-error")
    assert "item_id" in body["detail"]
    _assert_problem(client.post("/interactions", json={"user_id": "1", "item_id": "1", "extra": 1}, headers=AUTH),
                    422, "validation-error")
    _assert_problem(client.post("/interactions", json=[], headers=AUTH), 422, "validation-error")
    body = _assert_problem(client.post("/interactions", json=[{"user_id": "1"}] * 51, headers=AUTH),
                           422, "validation-error")
    assert "at most 50 interactions" in body["detail"]  # refused before the list is parsed
    body = _assert_problem(client.post("/interactions", json=[{"user_id": "1", "item_id": 2}], headers=AUTH),
                           422, "validation-error")
    assert body["errors"] == [{"location": "body.0.item_id", "message": "Input should be a valid string",
                               "type": "string_type"}]
    body = _assert_problem(client.post("/interactions", content=b"{not json", headers={**AUTH, "content-type":
                           "application/json"}), 400, "malformed-body")
    assert "not valid JSON" in body["detail"]
    _assert_problem(client.post("/interactions", content=b"\xc3\x28", headers=AUTH), 400, "malformed-body")
    _assert_problem(client.post("/interactions", content=b"[" * 5, headers=AUTH), 400, "malformed-body")
    _assert_problem(client.post("/interactions", content=b"user_id=1", headers={**AUTH, "content-type":
                                "application/x-www-form-urlencoded"}), 415, "unsupported-media-type")
    body = _assert_problem(client.post("/interactions", content=b" " * 2049, headers=AUTH), 413, "body-too-large")
    assert body["max_bytes"] == 2048
    _assert_problem(client.post("/interactions", json={"user_id": "1", "item_id": "1"},
                                headers={**AUTH, "Idempotency-Key": "with space"}), 422, "validation-error")
    _assert_problem(client.post("/admin/reload"), 401, "unauthorized")


def test_unexpected_errors_leave_no_trace(settings):
    app = create_app(settings)

    def explode():
        raise RuntimeError("secret internals")
    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = _assert_problem(client.get("/explode"), 500, "internal-error")
        assert "secret" not in client.get("/explode").text and body["title"] == "Internal Server Error"


def test_no_model_yet_is_503_and_reads_can_require_a_key(tmp_path, model_dir):
    empty = Settings(model_dir=tmp_path / "empty", state_dir=tmp_path, reload_poll_seconds=0)
    with TestClient(create_app(empty)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        _assert_problem(client.get("/readyz"), 503, "no-model")
        _assert_problem(client.get("/recommend/1"), 503, "no-model")
    keyed = Settings(model_dir=model_dir, state_dir=tmp_path, reload_poll_seconds=0, open_reads=False,
                     api_keys=[KEY])
    with TestClient(create_app(keyed)) as client:
        _assert_problem(client.get("/recommend/1"), 401, "unauthorized")
        assert client.get("/recommend/1", headers=AUTH).status_code == 200


def test_redis_unreachable_serves_uncached_and_refuses_writes(model_dir, tmp_path):
    settings = Settings(model_dir=model_dir, redis_url="redis://127.0.0.1:1/0", api_keys=[KEY],
                        reload_poll_seconds=0, redis_timeout_seconds=0.1)
    artifact, user = _first_user(model_dir)
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            body = client.get(f"/recommend/{user}").json()
            assert body["cached"] is False and len(body["items"]) == 10
        ready = client.get("/readyz").json()
        assert ready["store"] == {"backend": "redis", "status": "degraded"}
        _assert_problem(client.post("/interactions", json={"user_id": user, "item_id": artifact.item_ids[0]},
                                    headers=AUTH), 503, "store-unavailable")


def test_api_key_values_never_reach_the_logs(client, caplog):
    client.post("/interactions", json={"user_id": "1"}, headers={"X-API-Key": "wrong-secret-value"})
    client.post("/interactions", json={"user_id": "1"}, headers=AUTH)
    assert "wrong-secret-value" not in caplog.text and KEY not in caplog.text


def test_redis_keys_carry_version_and_generation(settings, client, model_dir):
    if settings.redis_url is None:
        pytest.skip("Redis layout only")
    artifact, user = _first_user(model_dir)
    client.get(f"/recommend/{user}", params={"k": 5})
    client.post("/interactions", json={"user_id": user, "item_id": artifact.item_ids[1]}, headers=AUTH)
    client.get(f"/recommend/{user}", params={"k": 5})
    keys = {k.decode() for k in redis.Redis.from_url(settings.redis_url).keys("gnaq:*")}
    version = artifact.version
    assert {f"gnaq:{{u:{user}}}:rec:{version}:0:5", f"gnaq:{{u:{user}}}:rec:{version}:1:5",
            f"gnaq:{{u:{user}}}:codes:{version}", "gnaq:interactions"} <= keys


def test_a_post_on_one_replica_invalidates_the_near_cache_of_another(model_dir, redis_url, tmp_path):
    """Two apps on one Redis: replica A's in-process copy must not outlive a post accepted by replica B."""
    artifact, user = _first_user(model_dir)
    settings = Settings(model_dir=model_dir, redis_url=redis_url, api_keys=[KEY], reload_poll_seconds=0)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        deadline = time.monotonic() + 5
        while not (a.app.state.recommender.store.near.live and b.app.state.recommender.store.near.live):
            assert time.monotonic() < deadline, "replicas did not subscribe to invalidations"
            time.sleep(0.02)
        top = a.get(f"/recommend/{user}").json()["items"][0]["item_id"]
        assert a.get(f"/recommend/{user}").json()["cached"] is True  # now also in A's near cache
        assert b.post("/interactions", json={"user_id": user, "item_id": top}, headers=AUTH).status_code == 200
        deadline = time.monotonic() + 2
        while top in {i["item_id"] for i in a.get(f"/recommend/{user}").json()["items"]}:
            assert time.monotonic() < deadline, "replica A kept serving a result from before the post"
            time.sleep(0.01)


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/recommend/{user_id}", "/interactions", "/items/{item_id}/similar", "/healthz", "/readyz", "/metrics",
            "/admin/reload"} <= set(spec["paths"])
    recommend = spec["paths"]["/recommend/{user_id}"]["get"]
    assert {p["name"] for p in recommend["parameters"]} == {"user_id", "k"}
    assert client.get("/docs").status_code == 200


def _logged(settings, user):
    """The events of ``user`` in the interaction log, as the nightly job reads them: (item, event id)."""
    if settings.redis_url:
        entries = redis.Redis.from_url(settings.redis_url).xrange("gnaq:interactions")
        return [(f[b"item"].decode(), f[b"event"].decode()) for _, f in entries if f[b"user"].decode() == user]
    with contextlib.closing(sqlite3.connect(settings.interaction_log_path)) as db:
        return db.execute("SELECT item_id, event_id FROM interactions WHERE user_id = ?", (user,)).fetchall()


def test_a_retried_post_is_recorded_once(client, settings, model_dir):
    artifact, user = _first_user(model_dir)
    batch = [{"user_id": user, "item_id": i} for i in artifact.item_ids[:2]]
    key = {**AUTH, "Idempotency-Key": "3f1c0b2e-retry"}
    first = client.post("/interactions", json=batch, headers=key)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = client.post("/interactions", json=batch, headers=key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the first outcome: generation 1, not 2
    assert _logged(settings, user) == [(artifact.item_ids[0], "client:3f1c0b2e-retry#0"),
                                       (artifact.item_ids[1], "client:3f1c0b2e-retry#1")]
    assert _metric(client, "gnaq_interactions_recorded_total") == 2
    body = _assert_problem(client.post("/interactions", json=batch[:1], headers=key), 422, "idempotency-key-reused")
    assert "different body" in body["detail"]
    plain = client.post("/interactions", json=batch, headers=AUTH).json()  # no key: a new post each time
    assert plain["users"][0]["generation"] == 2 and len(_logged(settings, user)) == 4


def test_openapi_tells_what_the_service_sends(client, settings):
    spec = client.get("/openapi.json").json()
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (path, method, status)
                    assert response["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}
    paths = spec["paths"]
    k = next(p for p in paths["/recommend/{user_id}"]["get"]["parameters"] if p["name"] == "k")
    assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, settings.max_k)
    post = paths["/interactions"]["post"]
    assert {"400", "401", "413", "415", "422", "503"} <= set(post["responses"])
    assert post["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    batch = post["requestBody"]["content"]["application/json"]["schema"]["anyOf"][1]
    assert (batch["minItems"], batch["maxItems"]) == (1, settings.max_batch)
    assert "401" in paths["/admin/reload"]["post"]["responses"] and "409" in paths["/admin/reload"]["post"]["responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert post["security"] == paths["/admin/reload"]["post"]["security"] == [{"APIKeyHeader": []}]


def test_the_api_docs_need_no_network(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    assert not re.findall(r"(?:src|href)=[\"']https?://", page.text)  # every asset from this process
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404
