"""Items that first interact after training (issue 20), through the app's lifespan, on the real Redis."""

import time

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from cli.main import main
from contracts.interaction_log import STREAM
from contracts.versions import read_current, resolve_version
from service.core.config import Settings
from service.main import create_app

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
QUICK = ["--epochs", "2", "--qat-epochs", "2", "--eval-every", "1", "--patience", "1", "--no-progress"]


def _settings(model_dir, redis_url, tmp_path, **overrides):
    return Settings(**{"model_dir": model_dir, "redis_url": redis_url, "state_dir": tmp_path / "state",
                       "api_keys": [KEY], "reload_poll_seconds": 0, "max_k": 200, **overrides})


@pytest.fixture(params=["redis", "embedded"])
def backend(request):
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def _post(client, pairs):
    return client.post("/interactions", headers=AUTH, json=[{"user_id": u, "item_id": i} for u, i in pairs])


def _problem(response, status, slug):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/" + slug) and body["detail"]
    return body


def _metric(client, name):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("kind", ["float", "codes"])
def test_a_new_item_is_served_as_the_offline_fold_in_computes_it(kind, model_dir, redis_url, tmp_path):
    artifact = read_current(model_dir)
    pairs = artifact.train.pairs()
    popular = np.bincount(pairs[:, 1]).argmax()
    rows = pairs[pairs[:, 1] == popular, 0][:100]  # a new item liked by the users of a popular one
    posters = [artifact.user_ids[u] for u in rows]
    with TestClient(create_app(_settings(model_dir, redis_url, tmp_path, index=kind))) as client:
        _problem(client.get("/items/fresh-item/similar"), 404, "unknown-item")
        posted = _post(client, [(u, "fresh-item") for u in posters])
        assert posted.status_code == 200, posted.text
        assert _metric(client, "gnaq_items_added") == 1

        # Offline: the same fold-in from the artifact, then exact inner products over every served item.
        row = artifact.item_foldin().item(rows)
        vector = row.dequantize()[0]
        items = artifact.item.dequantize()
        assert row.row_bytes() == client.app.state.registry.model.item_foldin.item(rows).row_bytes()

        similar = client.get("/items/fresh-item/similar", params={"k": 10}).json()
        offline = np.argsort(-(items @ vector), kind="stable")[:10]
        assert [i["item_id"] for i in similar["items"]] == [artifact.item_ids[r] for r in offline]
        np.testing.assert_allclose([i["score"] for i in similar["items"]], (items @ vector)[offline], rtol=1e-4)

        # Recommendable to others: the user who ranks it highest gets it where the offline ranking puts it.
        users = artifact.user.dequantize()
        best, rank = None, 10**9
        for user in np.setdiff1d(np.arange(len(users)), rows):
            scores = items @ users[user]
            scores[artifact.train.of(user)] = -np.inf
            position = int((scores > users[user] @ vector).sum())
            if position < rank:
                best, rank = user, position
        assert rank < 200
        served = client.get(f"/recommend/{artifact.user_ids[best]}", params={"k": 200}).json()["items"]
        assert served[rank]["item_id"] == "fresh-item"
        np.testing.assert_allclose(served[rank]["score"], users[best] @ vector, rtol=1e-4)


def test_an_item_posted_on_one_replica_is_served_by_another(model_dir, redis_url, tmp_path):
    artifact = read_current(model_dir)
    settings = _settings(model_dir, redis_url, tmp_path)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        deadline = time.monotonic() + 5
        while not (a.app.state.recommender.store.near.live and b.app.state.recommender.store.near.live):
            assert time.monotonic() < deadline, "replicas did not subscribe"
            time.sleep(0.02)
        assert _post(b, [(artifact.user_ids[0], "shared-item")]).status_code == 200
        started = time.monotonic()
        while a.get("/items/shared-item/similar").status_code != 200:
            assert time.monotonic() - started < 2, "replica A did not pick the item up within 2 s"
            time.sleep(0.005)
        delay = time.monotonic() - started
        assert a.get("/items/shared-item/similar").json() == b.get("/items/shared-item/similar").json()
        assert _post(b, [(artifact.user_ids[1], "shared-item")]).status_code == 200  # generation 2
        deadline = time.monotonic() + 2
        while a.app.state.registry.model.added.generation("shared-item") != 2:
            assert time.monotonic() < deadline, "replica A kept the first generation"
            time.sleep(0.005)
        assert a.get("/items/shared-item/similar").json() == b.get("/items/shared-item/similar").json()
        assert _metric(a, "gnaq_item_sync_delay_seconds_count") == 2
        print(f"cross-replica delay: {delay * 1000:.1f} ms")


def test_a_restarted_replica_rebuilds_its_added_items(backend, model_dir, tmp_path):
    artifact = read_current(model_dir)
    settings = _settings(model_dir, backend, tmp_path)
    with TestClient(create_app(settings)) as client:
        assert _post(client, [(artifact.user_ids[0], "kept"), (artifact.user_ids[1], "kept")]).status_code == 200
        before = client.get("/items/kept/similar").json()
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 5
        while client.get("/items/kept/similar").status_code != 200:
            assert time.monotonic() < deadline, "the restarted app did not rebuild the item"
            time.sleep(0.02)
        assert client.get("/items/kept/similar").json() == before


def test_the_cap_on_added_items(backend, model_dir, tmp_path):
    artifact = read_current(model_dir)
    user = artifact.user_ids[0]
    with TestClient(create_app(_settings(model_dir, backend, tmp_path, max_added_items=2))) as client:
        assert _post(client, [(user, "new-1"), (user, "new-2")]).status_code == 200
        body = _problem(_post(client, [(user, artifact.item_ids[0]), (user, "new-3")]), 409, "item-cap-reached")
        assert body["added_items"] == 2 and body["cap"] == 2
        assert _metric(client, "gnaq_item_cap_refusals_total") == 1
        again = _post(client, [(user, "new-1"), (user, artifact.item_ids[0])])  # added already: accepted
        assert again.status_code == 200 and again.json()["users"][0]["generation"] == 2  # the 409 bumped nothing
        _problem(client.get("/items/new-3/similar"), 404, "unknown-item")
        assert client.app.state.registry.model.added.generation("new-1") == 2
        spec = client.get("/openapi.json").json()["paths"]["/interactions"]["post"]["responses"]
        assert "409" in spec and "GNAQ_MAX_ADDED_ITEMS (2)" in spec["409"]["description"]


def test_redis_down_applies_nothing(model_dir, tmp_path):
    artifact = read_current(model_dir)
    settings = _settings(model_dir, "redis://127.0.0.1:1/0", tmp_path, redis_timeout_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        _problem(_post(client, [(artifact.user_ids[0], "lost-item")]), 503, "store-unavailable")
        _problem(client.get("/items/lost-item/similar"), 404, "unknown-item")
        assert _metric(client, "gnaq_items_added") == 0


def test_a_user_known_only_from_new_items_waits(backend, model_dir, tmp_path):
    """An item whose only users are new has no vector yet; the post is still logged and the user is 404."""
    with TestClient(create_app(_settings(model_dir, backend, tmp_path))) as client:
        assert _post(client, [("nobody", "orphan-item")]).status_code == 200
        _problem(client.get("/items/orphan-item/similar"), 404, "unknown-item")
        _problem(client.get("/recommend/nobody"), 404, "unknown-user")


def test_the_retrain_trains_added_items_and_the_old_state_goes(model_dir, redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    artifact = read_current(model_dir)
    old = artifact.version
    settings = _settings(model_dir, redis_url, tmp_path, reload_poll_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        assert _post(client, [(u, "nightly-item") for u in artifact.user_ids[:4]]).status_code == 200
        assert client.get("/items/nightly-item/similar").status_code == 200
        assert main(["retrain", "--model-dir", str(model_dir), "--tolerance", "0.5", *QUICK]) == 0
        new = resolve_version(model_dir).name
        retrained = read_current(model_dir)
        assert "nightly-item" in retrained.item_ids and len(retrained.item_ids) == len(artifact.item_ids) + 1
        row = retrained.item_ids.index("nightly-item")
        assert (retrained.train.pairs()[:, 1] == row).sum() == 4  # each interaction once
        assert redis.Redis.from_url(redis_url).xlen(STREAM) == 0
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["model_version"] != new:
            assert time.monotonic() < deadline, "the service did not pick up the new version"
            time.sleep(0.05)
        model = client.app.state.registry.model
        assert len(model.added) == 0 and model.item_row("nightly-item") == row  # trained now, not added
        assert client.get("/items/nightly-item/similar").json()["model_version"] == new
        assert _metric(client, "gnaq_items_added") == 0
        r = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 5
        while r.ttl(f"gnaq:added:{old}:ids") < 0:  # the old version's item state expires after a grace
            assert time.monotonic() < deadline, "the old version's item state was not retired"
            time.sleep(0.05)
        assert not r.keys(f"gnaq:added:{new}:*")
        assert _post(client, [(artifact.user_ids[5], "nightly-item")]).json()["users"][0]["new_user"] is False
        assert not r.keys(f"gnaq:added:{new}:*")  # a trained item is no longer added


def test_items_a_new_model_lacks_are_carried_over(backend, model_dir, tmp_path):
    """An item first posted while the retrain ran is not in the new model: it stays served, under the new one."""
    from contracts.versions import add_version

    artifact = read_current(model_dir)
    with TestClient(create_app(_settings(model_dir, backend, tmp_path, reload_poll_seconds=0.1))) as client:
        assert _post(client, [(artifact.user_ids[0], "late-item"), (artifact.user_ids[1], "late-item")]).status_code \
            == 200
        before = client.get("/items/late-item/similar").json()
        add_version(model_dir, artifact, version="v2")  # trained without it
        deadline = time.monotonic() + 10
        while (reply := client.get("/items/late-item/similar")).json().get("model_version") != "v2":
            assert time.monotonic() < deadline, f"not served under the new version: {reply.text}"
            time.sleep(0.05)
        assert reply.json()["items"] == before["items"]
        assert client.app.state.registry.model.added.generation("late-item") == 1  # carried, folded in again
        assert _post(client, [(artifact.user_ids[2], "late-item")]).status_code == 200
        assert client.app.state.registry.model.added.generation("late-item") == 2
