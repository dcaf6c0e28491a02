"""Synthetic user-item graphs with power-law degrees, for memory and speed at sizes no real dataset here has.

Each interaction draws its user and its item independently from Zipf-like popularity, ``p(rank r) ~ r^-alpha``
(rank 1 the most active user, the most popular item), so both degree distributions have heavy tails like
Gowalla's; duplicate pairs are dropped and topped up until ``edges`` distinct pairs remain. Ids are shuffled so
popularity is not ordered by id. ``python bench/synthetic.py 100000`` prints the degree statistics of one graph.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _popularity(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return rng.permutation(weights / weights.sum())


def power_law_graph(nodes: int, edges_per_node: float = 20.0, *, user_share: float = 0.5, alpha: float = 0.5,
                    seed: int = 0) -> tuple[np.ndarray, int, int]:
    """``(pairs, n_users, n_items)``: ``round(nodes * edges_per_node)`` distinct (user, item) pairs, int64."""
    if nodes < 4 or not 0 < user_share < 1:
        raise ValueError("need at least 4 nodes and a user share in (0, 1)")
    rng = np.random.default_rng(seed)
    n_users = max(2, int(nodes * user_share))
    n_items = nodes - n_users
    target = int(round(nodes * edges_per_node))
    if target > n_users * n_items // 2:
        raise ValueError(f"{target} edges is more than half of the {n_users} x {n_items} possible pairs")
    user_p, item_p = _popularity(n_users, alpha, rng), _popularity(n_items, alpha, rng)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < target:
        draw = int((target - len(keys)) * 1.1) + 16
        users = rng.choice(n_users, size=draw, p=user_p)
        items = rng.choice(n_items, size=draw, p=item_p)
        keys = np.unique(np.concatenate([keys, users * n_items + items]))
    keys = rng.permutation(keys)[:target]
    pairs = np.stack([keys // n_items, keys % n_items], axis=1)
    return pairs, n_users, n_items


def degree_summary(pairs: np.ndarray, n_users: int, n_items: int) -> dict[str, float]:
    """Mean, median, 99th percentile and max degree of each side (what "power law" means here, in numbers)."""
    out: dict[str, float] = {"edges": len(pairs)}
    for side, column, n in (("user", 0, n_users), ("item", 1, n_items)):
        degree = np.bincount(pairs[:, column], minlength=n)
        out.update({f"{side}_mean": float(degree.mean()), f"{side}_median": float(np.median(degree)),
                    f"{side}_p99": float(np.percentile(degree, 99)), f"{side}_max": int(degree.max()),
                    f"{side}_isolated": int((degree == 0).sum())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nodes", type=int)
    parser.add_argument("--edges-per-node", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()
    pairs, n_users, n_items = power_law_graph(args.nodes, args.edges_per_node, alpha=args.alpha)
    print(json.dumps({"n_users": n_users, "n_items": n_items, **degree_summary(pairs, n_users, n_items)}, indent=1))


if __name__ == "__main__":
    main()
