"""mtrl_fair.report.stats: the IQM, the stratified bootstrap, the standard error and Jain's index."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import trim_mean

from mtrl_fair.report import (
    batched_iqm,
    batched_mean,
    iqm,
    jain_index,
    mean_and_se,
    stratified_bootstrap_ci,
)
from mtrl_fair.report.stats import FloatArray


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 3), (3, 3), (5, 10), (7, 3), (4, 4), (10, 50), (3, 1)])
def test_iqm_matches_scipy_trim_mean(shape: tuple[int, int]) -> None:
    scores = np.random.default_rng(sum(shape)).random(shape)
    assert iqm(scores) == pytest.approx(trim_mean(scores.ravel(), 0.25), abs=1e-12)
    stack = np.random.default_rng(1).random((4, *shape))
    np.testing.assert_allclose(batched_iqm(stack), [iqm(m) for m in stack], atol=1e-12)
    np.testing.assert_allclose(batched_mean(stack), stack.reshape(4, -1).mean(axis=1))


def test_iqm_ignores_the_outer_quartiles() -> None:
    assert iqm([[0.0, 0.5, 0.5, 1.0], [-100.0, 0.5, 0.5, 100.0]]) == pytest.approx(0.5)


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible() -> None:
    scores = np.random.default_rng(0).beta(2, 2, size=(5, 10))
    low, high = stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 7)
    assert low < iqm(scores) < high
    assert stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 7) == (low, high)
    assert stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 8) != (low, high)
    narrower = stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.5, 7)
    assert low <= narrower[0] <= narrower[1] <= high


def test_bootstrap_ci_shrinks_with_more_runs() -> None:
    rng = np.random.default_rng(1)
    few = rng.beta(2, 2, size=(3, 10))
    many = rng.beta(2, 2, size=(60, 10))
    width_few = np.diff(stratified_bootstrap_ci(few, batched_iqm, 2000, 0.95, 0))[0]
    width_many = np.diff(stratified_bootstrap_ci(many, batched_iqm, 2000, 0.95, 0))[0]
    assert width_many < width_few / 2


def test_bootstrap_ci_is_degenerate_without_variation() -> None:
    assert stratified_bootstrap_ci(np.full((4, 3), 0.7), batched_iqm, 500, 0.95, 0) == pytest.approx(
        (0.7, 0.7)
    )
    one_run = np.array([[0.1, 0.9, 0.4]])
    assert stratified_bootstrap_ci(one_run, batched_mean, 500, 0.95, 0) == pytest.approx((1.4 / 3, 1.4 / 3))


def test_bootstrap_resamples_runs_within_each_task() -> None:
    # Column j holds 10 j + run: a resampled value must come from its own column.
    scores = np.arange(4)[:, None] + 10.0 * np.arange(3)[None, :]
    seen = []

    def record(samples: np.ndarray) -> np.ndarray:
        seen.append(samples)
        return samples.reshape(len(samples), -1).mean(axis=1)

    stratified_bootstrap_ci(scores, record, 300, 0.9, 0)
    samples = np.concatenate(seen)
    assert samples.shape == (300, 4, 3)
    np.testing.assert_array_equal(samples // 10, np.broadcast_to(np.arange(3), samples.shape))
    # Runs are drawn independently per task: rows mix runs, unlike a plain run bootstrap.
    assert np.any(samples % 10 != (samples % 10)[..., :1])


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci(np.ones((2, 2)), batched_iqm, 10, 1.0, 0)
    with pytest.raises(ValueError, match="reps"):
        stratified_bootstrap_ci(np.ones((2, 2)), batched_iqm, 0, 0.9, 0)
    with pytest.raises(ValueError, match="matrix"):
        stratified_bootstrap_ci(np.ones(3), batched_iqm, 10, 0.9, 0)


def test_mean_and_se() -> None:
    mean, se = mean_and_se([0.5, 1 / 3])
    assert mean == pytest.approx(5 / 12)
    assert se == pytest.approx(np.std([0.5, 1 / 3], ddof=1) / math.sqrt(2))
    mean, se = mean_and_se([0.25])
    assert mean == 0.25
    assert math.isnan(se)


def test_jain_index_edge_cases() -> None:
    assert jain_index([0.3, 0.3, 0.3]) == pytest.approx(1.0)
    assert jain_index([0.0, 1.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert math.isnan(jain_index([0.0, 0.0]))
    assert jain_index([0.75, 0.5, 0.0]) == pytest.approx(1.5625 / 2.4375)
    for x in np.random.default_rng(0).random((50, 7)):
        assert 1 / 7 - 1e-12 <= jain_index(x) <= 1 + 1e-12


# ----------------------------------------------------------------------------------------------------
# Values computed by hand
# ----------------------------------------------------------------------------------------------------


def test_iqm_of_eight_values_is_the_mean_of_the_middle_four() -> None:
    # Pooled and sorted: 0.0, 0.1, | 0.2, 0.3, 0.4, 0.5, | 0.6, 1.0. int(0.25 * 8) = 2 values are cut
    # from each end, leaving (0.2 + 0.3 + 0.4 + 0.5) / 4 = 1.4 / 4 = 0.35.
    assert iqm([[0.6, 0.0, 0.3, 1.0], [0.2, 0.5, 0.1, 0.4]]) == pytest.approx(0.35)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # n = 6: int(1.5) = 1 value cut from each end, no fractional weights: (2 + 3 + 4 + 10) / 4 = 4.75.
        # (Trimming 1.5 values from each end would give (0.5 * 2 + 3 + 4 + 0.5 * 10) / 3 = 13 / 3.)
        ([10.0, 1.0, 4.0, 100.0, 2.0, 3.0], 4.75),
        # n = 7: int(1.75) = 1 cut from each end: (2 + 3 + 4 + 5 + 6) / 5 = 4.
        ([[70.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], 4.0),
        # n = 5: int(1.25) = 1 cut from each end: (0.2 + 0.3 + 0.7) / 3 = 0.4.
        ([[0.9], [0.2], [0.0], [0.7], [0.3]], 0.4),
        # n = 3: int(0.75) = 0, nothing is cut: the plain mean (0.1 + 0.2 + 0.9) / 3 = 0.4.
        ([[0.1, 0.2, 0.9]], 0.4),
        # n = 1: the value itself.
        ([[0.3]], 0.3),
    ],
)
def test_iqm_cuts_whole_values_when_the_count_is_not_a_multiple_of_four(
    scores: list[float] | list[list[float]], expected: float
) -> None:
    assert iqm(scores) == pytest.approx(expected)


def test_iqm_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        iqm(np.zeros((0, 3)))


def test_mean_and_se_by_hand() -> None:
    # [0, 1]: mean 0.5; variance with ddof=1 (0.25 + 0.25) / 1 = 0.5; SE sqrt(0.5) / sqrt(2) = 0.5.
    assert mean_and_se([0.0, 1.0]) == pytest.approx((0.5, 0.5))
    # [0.2, 0.4, 0.9]: mean 1.5 / 3 = 0.5; deviations -0.3, -0.1, 0.4; squares sum to 0.26; variance
    # with ddof=1 0.26 / 2 = 0.13; SE sqrt(0.13) / sqrt(3) = sqrt(0.13 / 3).
    assert mean_and_se([0.2, 0.4, 0.9]) == pytest.approx((0.5, math.sqrt(0.13 / 3)))
    # A matrix is flattened: [0, 1, 0, 1] has mean 0.5, variance 4 * 0.25 / 3 = 1 / 3, SE sqrt(1/3) / 2.
    assert mean_and_se([[0.0, 1.0], [0.0, 1.0]]) == pytest.approx((0.5, math.sqrt(1 / 3) / 2))
    # Nothing: both undefined.
    assert all(math.isnan(v) for v in mean_and_se([]))


def test_jain_index_by_hand() -> None:
    # Equal values x: (n x)^2 / (n * n x^2) = 1.
    assert jain_index([0.4] * 5) == pytest.approx(1.0)
    # One non-zero value x among n = 5: x^2 / (5 x^2) = 1 / 5.
    assert jain_index([0.0, 0.0, 0.7, 0.0, 0.0]) == pytest.approx(1 / 5)
    # [0.2, 0.4, 0.6]: (1.2)^2 / (3 * (0.04 + 0.16 + 0.36)) = 1.44 / 1.68 = 6 / 7.
    assert jain_index([0.2, 0.4, 0.6]) == pytest.approx(6 / 7)
    # [1, 0.5]: 1.5^2 / (2 * 1.25) = 2.25 / 2.5 = 0.9.
    assert jain_index([1.0, 0.5]) == pytest.approx(0.9)


@pytest.mark.parametrize("statistic", [batched_iqm, batched_mean])
def test_bootstrap_ci_of_constant_scores_is_that_constant(statistic: Callable[[FloatArray], FloatArray]) -> None:
    # Every resample of a constant matrix is the same matrix, so every resampled IQM or mean is 0.25
    # (exact in binary) and so are both percentiles.
    scores = np.full((3, 4), 0.25)
    assert stratified_bootstrap_ci(scores, statistic, 1000, 0.95, 0) == (0.25, 0.25)


def test_bootstrap_ci_is_a_function_of_the_seed() -> None:
    scores = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.8], [0.7, 0.4, 0.0], [0.6, 0.6, 0.5]])
    first = stratified_bootstrap_ci(scores, batched_iqm, 500, 0.9, 11)
    # The same seed, given again or as a generator built from it, draws the same resamples.
    assert stratified_bootstrap_ci(scores, batched_iqm, 500, 0.9, 11) == first
    assert stratified_bootstrap_ci(scores, batched_iqm, 500, 0.9, np.random.default_rng(11)) == first
    # The interval is one of the resampled IQMs' percentiles: it lies within the data's range.
    assert scores.min() <= first[0] <= first[1] <= scores.max()
