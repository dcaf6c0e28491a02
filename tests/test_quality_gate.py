"""The nightly job's quality gate and its record: noise passes, clear regressions are refused, waits are told."""

import logging

import numpy as np
import pytest

from contracts.interaction_log import Interaction, LoggedInteraction
from contracts.versions import read_current, read_retrain_status
from training.quality_gate import GateSettings, judge, ratio_interval
from training.retrain import _status, new_data

GATE = GateSettings(tolerance=0.05, confidence=0.95, min_users=20)


def _recalls(rng, users, mean):
    """Per-user Recall@20 of a few validation pairs each: mostly 0, 0.5 or 1, as on small data."""
    pairs = rng.integers(1, 4, users)
    return rng.binomial(pairs, mean) / pairs


def test_small_data_noise_below_the_point_threshold_passes():
    # The case that blocked forever: 0.58 against 0.95 x 0.63 on a few hundred validation pairs.
    rng = np.random.default_rng(0)
    current = _recalls(rng, 250, 0.63)
    candidate = np.clip(current + rng.normal(-0.04, 0.3, 250), 0, 1)
    assert candidate.mean() < 0.95 * current.mean()
    verdict = judge(candidate, current, GATE)
    assert verdict.passed and verdict.upper_bound > 0 and "not clearly below" in verdict.reason
    assert judge(candidate, current, GATE) == verdict  # seeded: the same decision every night


def test_a_clear_regression_is_refused_and_large_data_is_judged_as_strictly_as_the_point_rule():
    rng = np.random.default_rng(1)
    current = _recalls(rng, 5000, 0.3)
    assert not judge(np.zeros(5000), current, GATE).passed
    assert not judge(0.9 * current, current, GATE).passed  # 10% worse, beyond the 5% tolerance
    assert judge(0.97 * current, current, GATE).passed  # 3% worse, within it
    assert judge(current, current, GATE).passed


def test_too_few_validation_users_cannot_be_judged():
    verdict = judge(np.zeros(5), np.ones(5), GATE)
    assert verdict.passed and verdict.upper_bound is None and "too few to judge" in verdict.reason
    with pytest.raises(ValueError, match="one shape"):
        judge(np.zeros(5), np.ones(4), GATE)
    with pytest.raises(ValueError, match="tolerance <= 1"):
        GateSettings(tolerance=1.5)


def test_duplicate_events_count_once_and_known_pairs_are_not_new(trained):
    artifact = read_current(trained)
    user, known_item = artifact.user_ids[0], artifact.item_ids[int(artifact.train.of(0)[0])]
    unseen = next(artifact.item_ids[i] for i in range(len(artifact.item_ids)) if i not in set(artifact.train.of(0)))
    pairs = [(user, known_item), (user, unseen), ("new-user", unseen), ("new-user", "new-item"), (user, "new-item")]
    events = [LoggedInteraction(str(n), Interaction(*pairs[n % 5], 0.0, 0.0)) for n in range(1000)]
    assert str(new_data(artifact, events)) == "1000 logged interactions (5 distinct pairs, 4 new)"


def test_interactions_pending_for_several_runs_are_recorded_and_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.retrain"):
        for _ in range(2):
            _status(tmp_path, "refused", "v", 12, alert_after=3)
        assert "pending" not in caplog.text
        _status(tmp_path, "refused", "v", 12, alert_after=3)
    status = read_retrain_status(tmp_path)
    assert (status.runs_pending, status.pending_interactions, status.outcome) == (3, 12, "refused")
    assert "12 logged interactions have been pending for 3 retrain runs" in caplog.text
    _status(tmp_path, "published", "w", 0, alert_after=3)
    status = read_retrain_status(tmp_path)
    assert (status.runs_pending, status.pending_interactions, status.pending_since) == (0, 0, None)


def test_the_service_exports_the_last_run_as_metrics(model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    for _ in range(3):
        _status(model_dir, "refused", "v", 7, alert_after=9)
    settings = Settings(model_dir=model_dir, redis_url=None, state_dir=tmp_path, reload_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
    assert "gnaq_retrain_runs_pending 3.0" in text and "gnaq_retrain_pending_interactions 7.0" in text


def test_the_ratio_interval_holds_the_ratio_and_narrows_with_more_users():
    rng = np.random.default_rng(3)
    reference = rng.random(4000)
    model = np.clip(reference * 0.97 + rng.normal(0, 0.05, 4000), 0, 1)
    found = ratio_interval(model, reference, "recall@20")
    assert found.low < found.ratio < found.high and found.ratio == pytest.approx(model.mean() / reference.mean())
    few = ratio_interval(model[:400], reference[:400], "recall@20")
    assert few.high - few.low > 2 * (found.high - found.low)
    same = ratio_interval(reference, reference, "recall@20", resamples=200)
    assert same.low == pytest.approx(1) and same.high == pytest.approx(1)


def test_a_ratio_to_nothing_is_refused():
    with pytest.raises(ValueError, match="a ratio to it means nothing"):
        ratio_interval(np.ones(10), np.zeros(10), "recall@20")
    with pytest.raises(ValueError, match="one non-empty shape"):
        ratio_interval(np.ones(10), np.ones(9), "recall@20")
