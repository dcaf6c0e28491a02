"""How well does requantizing a user from its interactions alone (the service's path) rank?

Every user of a trained artifact is rebuilt from its training items only (model/foldin.py), quantized,
and ranked against the test split, side by side with the user codes the model was trained to.
Usage: python bench/foldin.py MODEL_DIR_OR_VERSION
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from contracts.versions import read_current
from training.datasets import load_dataset
from training.evaluate import evaluate_ranking, pairs_to_csr


def main(path: str) -> None:
    artifact = read_current(path)
    manifest, items = artifact.manifest, artifact.item.dequantize()
    record = manifest.dataset
    data = load_dataset(record.name, data_dir=record.data_dir, split=record.split, test_fraction=record.test_fraction,
                        seed=manifest.seed)
    assert data.fingerprint() == record.fingerprint, "dataset differs from the one the model saw"
    n_users, n_items = len(artifact.user_ids), len(artifact.item_ids)
    seen = pairs_to_csr(artifact.train.pairs(), n_users, n_items)
    started = time.perf_counter()
    foldin = artifact.foldin()
    folded = np.stack([foldin.user(seen[u].indices).dequantize()[0] for u in range(n_users)])
    per_user_ms = 1000 * (time.perf_counter() - started) / n_users
    relevant = pairs_to_csr(data.test, n_users, n_items)
    for name, users in (("trained user codes", artifact.user.dequantize()), ("folded-in + requantized", folded)):
        metrics = evaluate_ranking(torch.from_numpy(users), torch.from_numpy(items), seen, relevant)
        print(f"{name:24s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"FoldIn.user: {per_user_ms:.3f} ms per user (mean over {n_users})")


if __name__ == "__main__":
    main(sys.argv[1])
