"""Listwise distillation from the fp32 teacher: its value, its gradient, and where the pipeline turns it on."""

import json

import pytest
import torch

from cli.main import main
from model import distillation
from model.distillation import ListwiseDistillation
from tests.conftest import FAST
from training.config import GNAQ_DISTILL, TrainConfig

# Two users, then three items.
TEACHER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])


def test_the_loss_is_the_kl_divergence_of_the_two_rankings_and_zero_for_the_teacher_itself():
    distil = ListwiseDistillation(TEACHER, n_users=2, weight=3.0, temperature=2.0)
    users = torch.tensor([0, 1])
    assert distil(TEACHER.clone(), users).item() == pytest.approx(0.0, abs=1e-6)

    student = TEACHER.clone()
    student[2:] = student[2:].flip(0)  # the items' order reversed
    t = TEACHER[:2] @ TEACHER[2:].T / 2.0
    s = student[:2] @ student[2:].T / 2.0
    p = torch.softmax(t, dim=1)
    expected = 3.0 * 4.0 * (p * (p.log() - torch.log_softmax(s, dim=1))).sum(1).mean()
    assert distil(student, users).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_gradient_raises_the_student_score_of_the_teachers_favourite():
    # User 0's teacher ranks item 0 first; a student scoring every item alike must be pushed up on item 0.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = ListwiseDistillation(TEACHER, n_users=2, weight=1.0)(student, torch.tensor([0]))
    loss.backward()
    assert student.grad.shape == student.shape
    assert student.grad[2, 0] < 0 < student.grad[3, 0]  # descent raises item 0's score, lowers item 1's
    assert torch.all(student.grad[1] == 0)  # user 1 was not in the sampled users


def test_the_gradient_is_autograds_through_log_softmax():
    # The loss's own backward (softmax minus the teacher's probabilities) against the formula differentiated by
    # autograd, in double precision.
    teacher, student, _ = _catalogue(n_users=6, n_items=30)
    teacher, student = teacher.double(), student.double().requires_grad_(True)
    users = torch.tensor([4, 0, 5])
    ListwiseDistillation(teacher, 6, weight=2.0, temperature=1.5)(student, users).backward()
    reference = student.detach().clone().requires_grad_(True)
    t = teacher[users] @ teacher[6:].T / 1.5
    s = reference[users] @ reference[6:].T / 1.5
    p = torch.softmax(t, dim=1)
    (2.0 * 1.5**2 * (p * (p.log() - torch.log_softmax(s, dim=1))).sum(1).mean()).backward()
    assert torch.allclose(student.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_the_teachers_ranking_is_kept_when_it_fits_and_scored_each_step_when_not(monkeypatch):
    teacher, student, pairs = _catalogue()
    users = torch.tensor([3, 17, 0, 39])
    kept = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs)
    monkeypatch.setattr(distillation, "TEACHER_CACHE_BYTES", 40 * 600 * 4 - 1)
    scored = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs)
    assert kept.cached is not None and scored.cached is None
    losses = []
    for distil in (kept, scored):
        s = student.clone().requires_grad_(True)
        loss = distil(s, users)
        loss.backward()
        losses.append((loss, s.grad))
    # The same scores, found for a block of users at once or for the step's: equal up to the matrix product's rounding.
    assert torch.allclose(losses[0][0], losses[1][0], rtol=1e-6)
    assert torch.allclose(losses[0][1], losses[1][1], rtol=1e-5, atol=1e-9)


def test_only_the_first_users_of_the_batch_are_distilled():
    distil = ListwiseDistillation(TEACHER, n_users=2, weight=1.0, users_per_step=1)
    student = TEACHER.clone()
    student[1] = -student[1]  # only user 1 differs from the teacher
    assert distil(student, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)
    assert distil(student, torch.tensor([1, 0])).item() > 0


def test_excluded_items_leave_both_softmaxes():
    # User 0 trained on item 0, user 1 on items 1 and 2: only the rest of each row is distilled.
    distil = ListwiseDistillation(TEACHER, n_users=2, weight=1.0, exclude=torch.tensor([[1, 2], [0, 0], [1, 1]]))
    student = TEACHER.clone()
    student[2:] = student[2:].flip(0)
    t, s = TEACHER[:1] @ TEACHER[3:].T, student[:1] @ student[3:].T  # user 0 over items 1 and 2
    p = torch.softmax(t, dim=1)
    expected = (p * (p.log() - torch.log_softmax(s, dim=1))).sum() / 2  # user 1 has one item left: KL 0
    assert distil(student, torch.tensor([0, 1])).item() == pytest.approx(expected.item(), rel=1e-5)

    moved = student.clone()
    moved[2] = torch.tensor([-5.0, 7.0])  # item 0: excluded for user 0, and user 1's only item left
    assert distil(moved, torch.tensor([0, 1])).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"weight": 0.0}, {"weight": 1.0, "temperature": 0.0},
                                    {"weight": 1.0, "users_per_step": 0}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match="positive"):
        ListwiseDistillation(TEACHER, n_users=2, **kwargs)
    with pytest.raises(ValueError, match="candidates must be at least 2"):
        ListwiseDistillation(TEACHER, n_users=2, weight=1.0, candidates=1)


def _catalogue(n_users: int = 40, n_items: int = 600, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A teacher, a student near it, and some training pairs to exclude."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(n_users + n_items, dim, generator=generator)
    student = teacher + 0.5 * torch.randn(n_users + n_items, dim, generator=generator)
    pairs = torch.stack([torch.randint(0, n_users, (400,), generator=generator),
                         torch.randint(0, n_items, (400,), generator=generator)], dim=1).unique(dim=0)
    return teacher, student, pairs


def test_a_catalogue_within_the_candidates_is_distilled_exactly():
    teacher, student, pairs = _catalogue()
    users = torch.arange(40)
    exact = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs)(student, users)
    within = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=600)
    assert not within.sampled and torch.equal(within(student, users), exact)


def test_the_sampled_softmax_estimates_the_exact_loss_and_is_deterministic_for_a_seed():
    teacher, student, pairs = _catalogue()
    users = torch.arange(40)
    exact = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs)(student, users).item()
    sampled = [ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=160, seed=seed)
               for seed in (0, 0, 1)]
    assert sampled[0].sampled and (sampled[0].top_count, sampled[0].sample_size) == (64, 96)
    first, again, other = (s(student, users).item() for s in sampled)
    assert first == again and first != other
    estimates = [sampled[2](student, users).item() for _ in range(200)]
    assert sum(estimates) / len(estimates) == pytest.approx(exact, rel=0.1)
    # 0 up to float32 rounding: the value cancels terms of size log(items) (about 5 here; docs/method.md, (d)), whose
    # rounding differs between CPUs (1.9e-6 on an AMD EPYC)
    assert sampled[0](teacher.clone(), users).item() == pytest.approx(0.0, abs=1e-5)


def test_the_sampled_loss_and_gradient_are_autograds_through_the_concatenated_softmax():
    # The written-out loss of the sampled softmax against the plain formulation (top items, then the sample with its
    # correction, masked cells at the excluded value, log_softmax), differentiated by autograd, in double precision.
    teacher, student, pairs = _catalogue()
    teacher, student = teacher.double(), student.double().requires_grad_(True)
    users = torch.tensor([5, 0, 39, 12])
    distil = ListwiseDistillation(teacher, 40, weight=2.0, temperature=1.5, exclude=pairs, candidates=160, seed=4)
    loss = distil(student, users)
    loss.backward()

    sample = torch.randperm(600, generator=torch.Generator().manual_seed(4))[: distil.sample_size]
    top_items = distil.top_items[users].long()
    excluded = torch.zeros(40, 600, dtype=torch.bool)
    excluded[pairs[:, 0], pairs[:, 1]] = True
    masked = (sample == top_items.unsqueeze(2)).any(1) | excluded[users][:, sample]

    def logits(embeddings: torch.Tensor) -> torch.Tensor:
        user = embeddings[users] / 1.5
        top = (user.unsqueeze(1) * embeddings[top_items + 40]).sum(2).masked_fill(distil.top_excluded[users], -1e9)
        rest = (user @ embeddings[sample + 40].T + distil.correction).masked_fill(masked, -1e9)
        return torch.cat([top, rest], dim=1)

    reference = student.detach().clone().requires_grad_(True)
    p = torch.softmax(logits(teacher), dim=1)
    kl = (torch.special.xlogy(p, p) - p * torch.log_softmax(logits(reference), dim=1)).sum(1).mean()
    (2.0 * 1.5**2 * kl).backward()
    assert masked.any()  # some sampled cells are left out
    assert loss.item() == pytest.approx(2.0 * 1.5**2 * kl.item(), rel=1e-9)
    assert torch.allclose(student.grad, reference.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("candidates", [None, 160])  # the exact and the sampled softmax
def test_the_scratch_matrices_serve_steps_of_any_size_and_the_backward_runs_once(candidates):
    teacher, student, pairs = _catalogue()
    reused = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=candidates)
    for users in (torch.arange(40), torch.tensor([3, 9]), torch.arange(20)):  # the scratch is sized by the first
        fresh = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=candidates)
        if candidates:
            fresh.generator.set_state(reused.generator.get_state())  # the same sample
        gradients = []
        for distil in (reused, fresh):
            s = student.clone().requires_grad_(True)
            distil(s, users).backward()
            gradients.append(s.grad)
        assert torch.equal(*gradients)
    loss = reused(student.clone().requires_grad_(True), torch.arange(5))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
    first = reused(student.clone().requires_grad_(True), torch.arange(5))
    reused(student.clone().requires_grad_(True), torch.arange(5))  # a second forward writes over the scratch
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()  # autograd's version check refuses the stale scratch rather than a wrong gradient


def test_a_restarted_copy_shares_the_top_items_and_replays_the_sample_sequence():
    teacher, student, pairs = _catalogue()
    users = torch.arange(40)
    original = ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=160, seed=3)
    first = [original(student, users).item() for _ in range(3)]
    restarted = original.restarted()
    assert restarted.top_items is original.top_items  # found once, not again
    assert [restarted(student, users).item() for _ in range(3)] == first
    assert original(student, users).item() != first[0]  # the original's sequence went on


def test_the_sampled_softmax_leaves_out_excluded_items_and_reaches_sampled_ones():
    teacher, student, pairs = _catalogue()
    users = torch.arange(40)
    distil = [ListwiseDistillation(teacher, 40, weight=1.0, exclude=pairs, candidates=160) for _ in range(2)]
    moved = student.clone()
    only_excluded = torch.ones(600, dtype=torch.bool)
    only_excluded[pairs[pairs[:, 0] != 0, 1]] = False  # items excluded for user 0 alone
    only_excluded[torch.arange(600)[~torch.isin(torch.arange(600), pairs[pairs[:, 0] == 0, 1])]] = False
    moved[40:][only_excluded] = 50.0  # whatever user 0 scores them, they are out of user 0's softmax
    assert only_excluded.any()
    assert distil[0](moved, users[:1]).item() == pytest.approx(distil[1](student, users[:1]).item(), rel=1e-5)
    student.requires_grad_(True)
    distil[0](student, users).backward()
    assert student.grad[40:].abs().sum(1).gt(0).sum() > 100  # sampled items get a gradient too


def test_gnaq_distils_by_default_and_the_baselines_only_when_asked():
    assert TrainConfig(method="gnaq").distill_weight == GNAQ_DISTILL > 0
    assert TrainConfig(method="gnaq", distill={"weight": 0}).distill_weight == 0
    assert TrainConfig(method="lsq").distill_weight == 0
    assert TrainConfig(method="lsq", distill={"weight": 2.0}).distill_weight == 2.0


def test_a_distilled_run_records_its_weight_and_keeps_its_best_validated_state(tmp_path):
    assert main(["train", *FAST, "--method", "lsq", "--bits", "2", "--distill", "1", "--distill-users", "64",
                 "--model-dir", str(tmp_path), "--version", "v1"]) == 0
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest["config"]["distill"] == {"weight": 1.0, "temperature": 1.0, "users": 64, "unseen": False,
                                          "candidates": 8192}
    history = json.loads((tmp_path / "v1" / "history.json").read_text())
    qat = [r for r in history if r["stage"] == "lsq-2bit" and r["valid"]]
    assert manifest["metrics"]["valid"]["recall@20"] == pytest.approx(max(r["valid"]["recall@20"] for r in qat))
