"""Paired bootstrap differences: known cases, the verdict read from the interval, determinism, bad input."""

from __future__ import annotations

import random

import pytest

from dash_vl.suites.paired_stats import PairedDifference, paired_difference


def test_a_constant_shift_holds_with_a_point_interval():
    base = [0.1 * i for i in range(10)]
    result = paired_difference([x + 0.25 for x in base], base)
    assert result.mean == pytest.approx(0.25)
    assert (result.low, result.high) == pytest.approx((0.25, 0.25))
    assert result.verdict() == "holds"
    assert result.verdict(threshold=0.3) == "fails"


def test_identical_scores_are_undecided():
    scores = [0.0, 0.4, 1.0, 0.7]
    result = paired_difference(scores, scores)
    assert (result.mean, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.verdict() == "undecided"


def test_a_consistent_loss_fails():
    rng = random.Random(1)
    b = [rng.random() for _ in range(60)]
    a = [x - 0.2 + rng.uniform(-0.05, 0.05) for x in b]
    result = paired_difference(a, b)
    assert result.high < 0
    assert result.verdict() == "fails"


def test_noise_around_zero_is_undecided_and_the_interval_holds_the_mean():
    rng = random.Random(2)
    b = [rng.random() for _ in range(40)]
    a = [x + rng.choice((-0.3, 0.3)) for x in b]
    result = paired_difference(a, b)
    assert result.low < result.mean < result.high
    assert result.verdict() == "undecided"


def test_the_interval_matches_the_normal_approximation_of_a_large_sample():
    rng = random.Random(3)
    differences = [rng.gauss(0.05, 0.2) for _ in range(400)]
    result = paired_difference(differences, [0.0] * 400)
    mean = sum(differences) / 400
    spread = (sum((d - mean) ** 2 for d in differences) / 399) ** 0.5
    half_width = 1.96 * spread / 400 ** 0.5
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.1)


def test_pairing_matters_more_than_the_spread_of_scores():
    """Scores that vary a lot between prompts but move together give a narrow paired interval."""
    b = [0.0, 1.0] * 20
    a = [x + 0.05 for x in b]
    assert paired_difference(a, b).verdict() == "holds"


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = random.Random(4)
    a, b = [rng.random() for _ in range(30)], [rng.random() for _ in range(30)]
    assert paired_difference(a, b) == paired_difference(a, b)
    assert paired_difference(a, b, seed=1) != paired_difference(a, b)


def test_weights_make_a_unit_count_as_many_prompts():
    result = paired_difference([1.0, 0.0], [0.0, 0.0], weights=[3, 1])
    assert result.mean == pytest.approx(0.75)
    assert 0.0 <= result.low <= result.mean <= result.high <= 1.0


def test_one_unit_is_undecided():
    assert paired_difference([0.9], [0.1]).verdict() == "undecided"


def test_the_cell_shows_mean_interval_and_verdict():
    assert PairedDifference(0.0361, 0.004, 0.069, 104).cell() == "+0.036 [+0.004, +0.069] holds"
    assert PairedDifference(-0.02, -0.05, 0.01, 104).cell(threshold=-0.03) == "-0.020 [-0.050, +0.010] undecided"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(a=[1.0], b=[1.0, 2.0]), "same units"),
        (dict(a=[], b=[]), "same units"),
        (dict(a=[1.0, 2.0], b=[1.0, 2.0], weights=[1, 0]), "positive"),
        (dict(a=[1.0], b=[1.0], resamples=0), "resamples"),
        (dict(a=[1.0], b=[1.0], level=1.0), "level"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(**kwargs)
