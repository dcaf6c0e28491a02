"""Recall@K / NDCG@K against a small example computed by hand."""

import math

import numpy as np
import pytest
import torch

from training.evaluate import evaluate_ranking, pairs_to_csr

# 2 users, 5 items. Item vectors are 1-D scores so the ranking is obvious: item i scores 5 - i.
ITEMS = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
USERS = torch.tensor([[1.0], [1.0]])


def test_hand_computed_recall_and_ndcg():
    # user 0: trained on item 0 (masked); test items {1, 3}. Ranking after masking: 1, 2, 3, 4.
    # user 1: nothing trained; test item {4}. Ranking: 0, 1, 2, 3, 4.
    exclude = pairs_to_csr(np.array([[0, 0]]), 2, 5)
    relevant = pairs_to_csr(np.array([[0, 1], [0, 3], [1, 4]]), 2, 5)
    metrics = evaluate_ranking(USERS, ITEMS, exclude, relevant, ks=(2, 3))
    # K=2: user 0 hits item 1 at rank 1 -> recall 1/2, dcg 1, idcg 1 + 1/log2(3); user 1: no hit.
    assert metrics["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0) / 2)
    # K=3: user 0 hits ranks 1 and 3 -> recall 1, dcg 1 + 1/2, idcg 1 + 1/log2(3); user 1 still none.
    assert metrics["recall@3"] == pytest.approx(0.5)
    assert metrics["ndcg@3"] == pytest.approx((1.5 / (1 + 1 / math.log2(3))) / 2)


def test_ideal_dcg_uses_min_of_k_and_relevant_count():
    # One user with 3 test items all ranked on top: NDCG@2 must be exactly 1 (idcg over 2, not 3).
    relevant = pairs_to_csr(np.array([[0, 0], [0, 1], [0, 2]]), 1, 5)
    exclude = pairs_to_csr(np.zeros((0, 2), dtype=np.int64), 1, 5)
    metrics = evaluate_ranking(USERS[:1], ITEMS, exclude, relevant, ks=(2,))
    assert metrics["ndcg@2"] == pytest.approx(1.0)
    assert metrics["recall@2"] == pytest.approx(2 / 3)


def test_blocking_does_not_change_results():
    rng = np.random.default_rng(0)
    users, items = torch.randn(50, 8), torch.randn(30, 8)
    exclude = pairs_to_csr(np.stack([rng.integers(0, 50, 200), rng.integers(0, 30, 200)], 1), 50, 30)
    relevant = pairs_to_csr(np.stack([rng.integers(0, 50, 100), rng.integers(0, 30, 100)], 1), 50, 30)
    relevant = relevant - relevant.multiply(exclude)
    whole = evaluate_ranking(users, items, exclude, relevant, ks=(5, 10))
    blocked = evaluate_ranking(users, items, exclude, relevant, ks=(5, 10), block_entries=30 * 3)
    assert whole == pytest.approx(blocked)


def test_rejects_k_larger_than_catalogue():
    relevant = pairs_to_csr(np.array([[0, 1]]), 1, 5)
    with pytest.raises(ValueError, match="1..5"):
        evaluate_ranking(USERS[:1], ITEMS, relevant, relevant, ks=(10,))
