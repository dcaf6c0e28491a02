"""The training loop's rules: BPR with several negatives, wall-time budget, learning-rate halving on a plateau,
early stopping, weight averaging, the state kept."""

import copy
import json

import numpy as np
import pytest
import torch

from cli.main import main
from contracts.versions import read_current
from model.graph import normalized_adjacency
from model.lightgcn import LightGCN
from tests.conftest import FAST
from training.sampling import NegativeSampler
from training.trainer import FitSettings, StageRun, WeightAverage, _parameter_groups, fit

N_USERS, N_ITEMS = 30, 40


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 300), rng.integers(0, N_ITEMS, 300)], 1), axis=0)
    return (LightGCN(N_USERS, N_ITEMS, dim=8, layers=2), normalized_adjacency(pairs, N_USERS, N_ITEMS), pairs,
            NegativeSampler(pairs, N_ITEMS, rng), rng)


def _fit(problem, scores, settings):
    model, adjacency, pairs, sampler, rng = problem
    scripted = iter(scores)
    return fit(model, adjacency, pairs, sampler, lambda: {"recall@20": next(scripted)}, settings, stage="fp32",
               rng=rng, progress=False)


def test_bpr_with_k_negatives_averages_k_single_negative_losses():
    model = LightGCN(N_USERS, N_ITEMS, dim=8, layers=0)
    final = model.embedding.weight
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    negatives = torch.tensor([[6, 7], [8, 9], [10, 11]])
    bpr, reg = model.bpr_loss(final, users, pos, negatives, l2=0.1)
    singles = [model.bpr_loss(final, users, pos, negatives[:, k], l2=0.1) for k in range(2)]
    torch.testing.assert_close(bpr, (singles[0][0] + singles[1][0]) / 2)
    torch.testing.assert_close(reg, (singles[0][1] + singles[1][1]) / 2)


def test_time_budget_stops_after_the_epoch_that_crosses_it_and_validates_it(problem):
    history = _fit(problem, [0.1, 0.2], FitSettings(epochs=50, batch_size=64, eval_every=10, max_seconds=0.0))
    assert [r.epoch for r in history] == [0, 1]
    assert history[-1].valid == {"recall@20": 0.2}


def test_learning_rate_halves_after_a_plateau(problem):
    scores = [0.1, 0.2, 0.2, 0.2, 0.2, 0.3]
    history = _fit(problem, scores, FitSettings(epochs=5, batch_size=64, lr=0.01, eval_every=1, patience=5,
                                                 lr_patience=1))
    # epoch 1 improves; epochs 2 and 3 do not, and the second of them (more than 1) halves lr from epoch 4
    assert [r.lr for r in history[1:]] == [0.01, 0.01, 0.01, 0.005, 0.005]


def test_early_stopping_after_patience_validations_without_improvement(problem):
    history = _fit(problem, [0.1, 0.2, 0.2, 0.2, 0.9], FitSettings(epochs=4, batch_size=64, eval_every=1, patience=2))
    assert [r.epoch for r in history] == [0, 1, 2, 3]


def test_without_lr_patience_the_learning_rate_is_constant(problem):
    history = _fit(problem, [0.1, 0.2, 0.2, 0.2, 0.3], FitSettings(epochs=4, batch_size=64, lr=0.01, eval_every=1))
    assert {r.lr for r in history[1:]} == {0.01}


def test_weight_average_follows_the_parameters_by_its_decay_and_lends_them_back():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(layer, decay=0.75)
    with torch.no_grad():
        layer.weight.fill_(5.0)
    average.update()  # 0.75 * 1 + 0.25 * 5
    with average.swapped_in():
        assert torch.equal(layer.weight, torch.full((1, 2), 2.0))
    assert torch.equal(layer.weight, torch.full((1, 2), 5.0))  # training goes on from its own weights
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(layer, decay=1.0)


def test_with_ema_the_averaged_weights_are_validated_and_kept(problem):
    model, adjacency, pairs, sampler, rng = problem
    seen = []

    def validate():
        seen.append(model.embedding.weight.detach().clone())
        return {"recall@20": [0.1, 0.5, 0.2][len(seen) - 1]}

    start = model.embedding.weight.detach().clone()
    fit(model, adjacency, pairs, sampler, validate, FitSettings(epochs=2, batch_size=64, lr=0.05, eval_every=1,
                                                                ema=0.5), stage="gnaq-2bit", rng=rng, progress=False)
    assert not torch.equal(seen[1], start)
    assert torch.equal(model.embedding.weight, seen[1])  # the best validated (averaged) state is the one kept


def _scripted_run(problem, scores, window):
    """Run a stage whose validations score ``scores``; returns it and the weights each validation saw."""
    model, adjacency, pairs, sampler, rng = problem
    seen = []

    def validate():
        seen.append(model.embedding.weight.detach().clone())
        return {"recall@20": scores[len(seen) - 1]}

    run = StageRun(model, adjacency, pairs, sampler, validate, FitSettings(
        epochs=len(scores) - 1, batch_size=64, lr=0.05, eval_every=1, patience=10, select_window=window),
        stage="gnaq-2bit", rng=rng, progress=False)
    run.advance(len(scores) - 1)
    return run, run.finish(), seen


def test_a_window_of_validations_keeps_the_state_ending_the_best_run_not_a_lone_peak(problem):
    scores = [0.1, 0.2, 0.5, 0.2, 0.3, 0.35, 0.36, 0.2]  # means of three: .27 .30 .33 .28 .337 .30
    run, history, seen = _scripted_run(problem, scores, window=3)
    assert torch.equal(run.model.embedding.weight, seen[6])
    assert [r.epoch for r in history if r.kept] == [6]
    assert run.best_score == 0.5  # what the race ranks and early stopping follows: single validations


def test_a_window_of_one_keeps_the_best_single_validation(problem):
    run, history, seen = _scripted_run(problem, [0.1, 0.2, 0.5, 0.2, 0.3], window=1)
    assert torch.equal(run.model.embedding.weight, seen[2])
    assert [r.epoch for r in history if r.kept] == [2]


def test_with_a_window_no_state_scoring_below_the_start_is_kept(problem):
    run, history, seen = _scripted_run(problem, [0.4, 0.9, 0.1, 0.1], window=3)  # the window ending at 2: .47
    assert torch.equal(run.model.embedding.weight, seen[0])
    assert [r.epoch for r in history if r.kept] == [0]


def test_named_parameters_can_train_at_a_scaled_learning_rate(problem):
    model, adjacency, pairs, sampler, rng = problem
    groups = _parameter_groups(model, 0.01, {"embedding.weight": 0.1})
    assert [g.get("lr") for g in groups] == [pytest.approx(0.001)]  # the only parameter, in its own group
    with pytest.raises(ValueError, match="no trainable parameter named quantizer.theta"):
        fit(model, adjacency, pairs, sampler, lambda: {"recall@20": 0.1}, FitSettings(epochs=1), stage="fp32",
            rng=rng, progress=False, lr_scales={"quantizer.theta": 0.1})


def test_after_epoch_runs_after_each_epochs_training_and_before_its_validation(problem):
    events = []
    model, adjacency, pairs, sampler, rng = problem

    def validate():
        events.append("validate")
        return {"recall@20": 0.1}

    fit(model, adjacency, pairs, sampler, validate, FitSettings(epochs=2, batch_size=64, eval_every=1), stage="fp32",
        rng=rng, progress=False, after_epoch=lambda epoch: events.append(epoch))
    assert events == ["validate", 1, "validate", 2, "validate"]


def test_a_seeded_run_is_reproducible_on_several_threads(tmp_path):
    """Two runs of one seed on two threads write the same codes: every backward sums in a fixed order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for run in ("a", "b"):
            # d = 64 and 8192 triples a step: large enough for the backward to run on several threads
            assert main(["train", *FAST, "--dim", "64", "--batch-size", "8192", "--method", "gnaq", "--bits", "2",
                         "--model-dir", str(tmp_path / run), "--version", "v"]) == 0
    finally:
        torch.set_num_threads(threads)
    warm_starts = [torch.load(next((tmp_path / run / ".cache").glob("fp32-*.pt")), weights_only=False)["state"]
                   for run in ("a", "b")]
    assert torch.equal(*(state["embedding.weight"] for state in warm_starts))  # bit for bit, not only close
    first, second = (read_current(tmp_path / run / "v") for run in ("a", "b"))
    assert first.manifest.metrics == second.manifest.metrics
    first_choices, second_choices = (json.loads(json.dumps(m.manifest.training.choices)) for m in (first, second))
    for choices in (first_choices, second_choices):
        for trial in choices["gnaq_variant"]["trials"]:
            assert trial.pop("seconds") > 0  # the race's cost, measured
    assert first_choices == second_choices  # the variant chosen alike, on the same scores
    np.testing.assert_array_equal(first.item.codes, second.item.codes)
    np.testing.assert_array_equal(first.user.scale, second.user.scale)


def test_a_stage_advanced_in_rounds_ends_where_one_run_to_the_end_does(problem):
    """What lets the race's winner train on: stopping between epochs changes nothing."""
    model, adjacency, pairs, sampler, rng = problem
    settings = FitSettings(epochs=5, batch_size=64, eval_every=1, lr_patience=1)
    start = copy.deepcopy(model.state_dict())
    ends = []
    for rounds in ([5], [1, 2, 2]):
        model.load_state_dict(start)
        order = np.random.default_rng(1)
        run = StageRun(model, adjacency, pairs, NegativeSampler(pairs, N_ITEMS, order), lambda: {"recall@20": 0.1},
                       settings, stage="fp32", rng=order, progress=False)
        assert [run.advance(n) for n in rounds][-1] and run.epochs == 5
        run.advance(3)  # an ended stage trains no further
        history = run.finish()
        ends.append((model.embedding.weight.detach().clone(), [r.loss for r in history], [r.lr for r in history]))
    assert torch.equal(ends[0][0], ends[1][0]) and ends[0][1:] == ends[1][1:]
