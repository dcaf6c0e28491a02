"""The nightly job's quality gate: is a candidate model clearly worse than the one serving?

Both models are scored per validation user (Recall@20 on the current model's stored validation pairs, same
masking), and the gate looks at the paired per-user difference ``candidate - (1 - tolerance) x current``. It
refuses only when that difference is negative with confidence: when the upper end of a one-sided bootstrap
confidence interval of its mean (users resampled, seeded) is below zero. On a few hundred validation pairs the
run-to-run noise of Recall@20 is several points, so a point comparison refuses good models night after night;
on large data the interval is narrow and the gate is as strict as the point rule. With fewer validation users
than ``min_users`` nothing can be judged and the candidate passes, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 100  # resamples drawn at once: bounds memory at 100 x users indices


@dataclass(frozen=True)
class GateSettings:
    """How strict the gate is: refuse below ``(1 - tolerance)`` x current, with this one-sided confidence."""

    tolerance: float = 0.05
    confidence: float = 0.95
    min_users: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance <= 1 or not 0.5 <= self.confidence < 1 or self.min_users < 1:
            raise ValueError(f"the gate needs 0 <= tolerance <= 1, 0.5 <= confidence < 1 and min_users >= 1, got "
                             f"{self.tolerance}, {self.confidence}, {self.min_users}")


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and the figures behind it."""

    passed: bool
    candidate: float  # mean per-user metric
    current: float
    users: int
    upper_bound: float | None  # of the mean paired difference; None when too few users to judge
    reason: str


def judge(candidate: np.ndarray, current: np.ndarray, gate: GateSettings, *, resamples: int = 1000,
          seed: int = 0) -> Verdict:
    """Compare per-user scores of the same users (paired, same order)."""
    if candidate.shape != current.shape or candidate.ndim != 1:
        raise ValueError(f"paired per-user scores must have one shape, got {candidate.shape} and {current.shape}")
    tolerance, confidence, min_users = gate.tolerance, gate.confidence, gate.min_users
    n = len(candidate)
    mean_candidate, mean_current = float(candidate.mean()), float(current.mean())
    threshold = (1 - tolerance) * mean_current
    if n < min_users:
        return Verdict(True, mean_candidate, mean_current, n, None,
                       f"only {n} validation users (< {min_users}): too few to judge, passed")
    difference = candidate - (1 - tolerance) * current
    rng = np.random.default_rng(seed)
    means = np.concatenate([difference[rng.integers(0, n, (min(_CHUNK, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, _CHUNK)])
    upper = float(np.quantile(means, confidence))
    passed = upper >= 0
    relation = "not clearly below" if passed else "clearly below"
    return Verdict(passed, mean_candidate, mean_current, n, upper,
                   f"{mean_candidate:.4f} is {relation} (1 - {tolerance}) x {mean_current:.4f} = {threshold:.4f}: "
                   f"the {confidence:.0%} upper bound of the mean paired difference over {n} users is {upper:+.4f}")
