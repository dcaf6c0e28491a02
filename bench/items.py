"""Items that first interact after training (issue 20): are folded-in items recommended to the right users?

A random 5% of the items (with training interactions) is held out of training entirely: a GNAQ model is trained
without them, published, and served by the app (its lifespan, ``REDIS_URL`` or the embedded store, cache off).
Their training interactions are then posted through ``POST /interactions``, one per request in random order (each
post recomputes the item), and every user's ``GET /recommend/{user}?k=20`` is read back. Recall@20 on the held-out
items' test pairs (users who did not interact with the item in training) is reported for:

* unknown: the lists before the posts (the service before issue 20 could not record, let alone serve, them);
* folded in: the lists after the posts;
* reference: a model trained with those items (same recipe), ranked offline the same way, for scale.

Recall@20 over all test pairs shows what the added items cost the trained ones. Also reported: the fold-in time
per item (the app's ``gnaq_item_foldin_seconds``) and the latency of a post; with ``REDIS_URL``, a second app
instance (replica B, same Redis) serves every added item too, and its ``gnaq_item_sync_delay_seconds`` (from
the save on A to the row served on B) is reported, and B's lists are checked against A's.
Usage: python bench/items.py [--dataset ml-100k] [--fraction 0.05] [--seed 0] [--runs-dir runs/items]
       [--reuse runs/items/<dir>]  (serve the two versions an earlier run trained, instead of training them)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from contracts.artifact import read_artifact
from service.core.config import Settings
from service.main import create_app
from training.config import TrainConfig
from training.interactions import Interactions
from training.pipeline import load_data, run_training

KEY = "bench-items"


def without_items(data: Interactions, held: np.ndarray) -> Interactions:
    """``data`` with the ``held`` items removed from the id map and from both splits (items reindexed)."""
    keep = np.setdiff1d(np.arange(data.n_items), held)
    new_index = np.full(data.n_items, -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))

    def reindexed(pairs: np.ndarray) -> np.ndarray:
        kept = pairs[new_index[pairs[:, 1]] >= 0]
        return np.stack([kept[:, 0], new_index[kept[:, 1]]], axis=1)

    return dataclasses.replace(data, n_items=len(keep), train=reindexed(data.train), test=reindexed(data.test),
                               item_ids=[data.item_ids[i] for i in keep])


def recall(top: dict[str, list[str]], relevant: dict[str, set[str]]) -> float:
    """Mean over users with relevant items of |top ∩ relevant| / |relevant|."""
    return float(np.mean([len(set(top.get(u, ())) & items) / len(items) for u, items in relevant.items()]))


def by_user(data: Interactions, pairs: np.ndarray) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for u, i in pairs:
        out.setdefault(data.user_ids[u], set()).add(data.item_ids[i])
    return out


def served_lists(client: TestClient, users: list[str]) -> dict[str, list[str]]:
    lists = {}
    for user in users:
        reply = client.get(f"/recommend/{user}", params={"k": 20})
        if reply.status_code == 200:
            lists[user] = [i["item_id"] for i in reply.json()["items"]]
    return lists


def offline_lists(path: Path) -> dict[str, list[str]]:
    """Top 20 of every user of a model version, its training items excluded (what the service serves)."""
    artifact = read_artifact(path)
    scores = artifact.user.dequantize() @ artifact.item.dequantize().T
    pairs = artifact.train.pairs()
    scores[pairs[:, 0], pairs[:, 1]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    return {u: [artifact.item_ids[i] for i in top[n]] for n, u in enumerate(artifact.user_ids)}


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the items held out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/items"))
    parser.add_argument("--reuse", type=Path, help="a model directory an earlier run of this script trained")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    model_dir = args.reuse or args.runs_dir / f"{args.dataset}-{stamp}"
    config = TrainConfig(dataset=args.dataset, seed=args.seed, progress=False, model_dir=str(model_dir))
    data = load_data(config)
    rng = np.random.default_rng(args.seed)
    candidates = np.unique(data.train[:, 1])
    held = np.sort(rng.choice(candidates, max(1, round(args.fraction * data.n_items)), replace=False))
    posted = data.train[np.isin(data.train[:, 1], held)]
    relevant = by_user(data, data.test[np.isin(data.test[:, 1], held)])
    everything = by_user(data, data.test)

    started = time.perf_counter()
    if args.reuse is None:
        run_training(config.model_copy(update={"version": "held-out", "publish": True}),
                     data=without_items(data, held))
        run_training(config.model_copy(update={"version": "reference", "publish": False}), data=data)
    training = time.perf_counter() - started

    redis_url = os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory() as state, contextlib.ExitStack() as replicas:
        settings = Settings(model_dir=model_dir, redis_url=redis_url, state_dir=Path(state),
                            api_keys=[KEY], cache_ttl_seconds=0, reload_poll_seconds=0, max_added_items=len(held))
        client = replicas.enter_context(TestClient(create_app(settings)))
        other = replicas.enter_context(TestClient(create_app(settings))) if redis_url else None
        if other is not None:
            while not other.app.state.recommender.store.near.live:  # B subscribed: it hears every save
                time.sleep(0.01)
        users = list(data.user_ids)
        before = served_lists(client, users)
        latencies = []
        for n in rng.permutation(len(posted)):
            u, i = posted[n]
            sent = time.perf_counter()
            reply = client.post("/interactions", headers={"X-API-Key": KEY},
                                json={"user_id": data.user_ids[u], "item_id": data.item_ids[i]})
            latencies.append(time.perf_counter() - sent)
            assert reply.status_code == 200, reply.text
        after = served_lists(client, users)
        folds = _metric(client, "gnaq_item_foldin_seconds_count")
        fold_seconds = _metric(client, "gnaq_item_foldin_seconds_sum") / max(folds, 1)
        added = _metric(client, "gnaq_items_added")
        if other is not None:
            time.sleep(1)
            delays = (_metric(other, "gnaq_item_sync_delay_seconds_sum"),
                      _metric(other, "gnaq_item_sync_delay_seconds_count"), _metric(other, "gnaq_items_added"))
            same = served_lists(other, users) == after
    ref = offline_lists(model_dir / "reference")

    print(f"{args.dataset}, seed {args.seed}: {len(held)} of {data.n_items} items held out of training "
          f"({len(posted)} training pairs posted one by one, {sum(map(len, relevant.values()))} test pairs of "
          f"{len(relevant)} users); {int(added)} items served as added; "
          + (f"models reused from {model_dir}" if args.reuse else f"two trainings took {training:.0f} s"))
    print(f"{'held-out items':<34} {'recall@20 (held-out pairs)':>26} {'recall@20 (all pairs)':>22}")
    for name, lists in (("unknown (before issue 20)", before), ("folded in through the API", after),
                        ("reference: trained with them", ref)):
        print(f"{name:<34} {recall(lists, relevant):>26.4f} {recall(lists, everything):>22.4f}")
    print(f"fold-in + requantize: {1000 * fold_seconds:.3f} ms per item (mean of {int(folds)} computations); "
          f"POST /interactions median {1000 * float(np.median(latencies)):.2f} ms, "
          f"p99 {1000 * float(np.quantile(latencies, 0.99)):.2f} ms (in-process client)")
    if other is not None:
        print(f"replica B: {int(delays[2])} items served; save on A -> served on B: mean "
              f"{1000 * delays[0] / max(delays[1], 1):.2f} ms over {int(delays[1])} rows; B's lists equal A's: {same}")


if __name__ == "__main__":
    main()
