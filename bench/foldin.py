"""What a post does to a known user's recommendations: trained vector only, rebuilt from items, or updated.

A model is trained with a few of each chosen user's training items held out; those items are then "posted"
the way the service folds them in, and the users' test-split Recall@20 and NDCG@20 are compared for:

* trained only: the user's trained codes, as if the post were ignored;
* rebuilt: the vector rebuilt from all the user's items alone (``FoldIn.user``, the service before issue 23);
* updated: the trained vector plus the new items by the propagation rule (``FoldIn.update``, the service now);
* reference: a model trained with those items, for scale.

Posted items are excluded from every ranking, as the service excludes them.
Usage: python bench/foldin.py [--dataset ml-100k] [--hold 3] [--min-items 10] [--seed 0] [--runs-dir runs/foldin]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from contracts.artifact import ModelArtifact, read_artifact
from training.config import TrainConfig
from training.evaluate import evaluate_ranking, pairs_to_csr
from training.interactions import Interactions
from training.pipeline import load_data, run_training
from training.splits import without_pairs


def hold_out(data: Interactions, hold: int, min_items: int, seed: int) -> np.ndarray:
    """``hold`` random training pairs of every user with at least ``min_items`` of them (seeded)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(data.train[:, 0], minlength=data.n_users)
    held = [rng.choice(np.flatnonzero(data.train[:, 0] == u), hold, replace=False)
            for u in np.flatnonzero(counts >= min_items)]
    return data.train[np.sort(np.concatenate(held))]


def _train(config: TrainConfig, data: Interactions, version: str) -> ModelArtifact:
    result = run_training(config.model_copy(update={"version": version}), data=data)
    return read_artifact(result.path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--hold", type=int, default=3, help="items held out and posted per chosen user")
    parser.add_argument("--min-items", type=int, default=10, help="users with at least this many training items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/foldin"))
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    config = TrainConfig(dataset=args.dataset, seed=args.seed, publish=False, progress=False,
                         model_dir=str(args.runs_dir / args.dataset))
    data = load_data(config)
    held = hold_out(data, args.hold, args.min_items, args.seed)
    users = np.unique(held[:, 0])
    reduced = dataclasses.replace(data, train=without_pairs(data.train, held))
    model = _train(config, reduced, f"held-out-{stamp}")
    reference = _train(config, data, f"reference-{stamp}")

    foldin, trained = model.foldin(), model.user.dequantize()
    rebuilt, updated = trained.copy(), trained.copy()
    seconds = []
    for user in users:
        posted = held[held[:, 0] == user, 1]
        rebuilt[user] = foldin.user(np.union1d(model.train.of(user), posted)).dequantize()[0]
        started = time.perf_counter()
        updated[user] = foldin.update(trained[user], model.train.of(user), posted).dequantize()[0]
        seconds.append(time.perf_counter() - started)
    exclude = pairs_to_csr(data.train, data.n_users, data.n_items)  # training items and posted ones
    chosen = np.isin(data.test[:, 0], users)
    relevant = pairs_to_csr(data.test[chosen], data.n_users, data.n_items)
    print(f"{args.dataset}, seed {args.seed}: {len(users)} users with >= {args.min_items} training items, "
          f"{args.hold} of them held out and posted; {int(chosen.sum())} test pairs")
    print(f"{'users as':<36} {'recall@20':>9} {'ndcg@20':>8}")
    for name, vectors, items in (("trained only (post ignored)", trained, model.item),
                                 ("rebuilt from their items", rebuilt, model.item),
                                 ("updated (trained + new items)", updated, model.item),
                                 ("reference: trained with the items", reference.user.dequantize(), reference.item)):
        metrics = evaluate_ranking(torch.from_numpy(vectors), torch.from_numpy(items.dequantize()), exclude,
                                   relevant, [20])
        print(f"{name:<36} {metrics['recall@20']:>9.4f} {metrics['ndcg@20']:>8.4f}")
    print(f"FoldIn.update: {1000 * float(np.median(seconds)):.3f} ms per user (median over {len(users)})")


if __name__ == "__main__":
    main()
