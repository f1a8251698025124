"""The studies' 95% intervals (`bench/intervals.py`): each contains its point, Wilson agrees with its
closed form, the bootstrap is seeded, and error bars are never negative."""

import pytest

from bench.intervals import bootstrap_mean, error_bars, wilson


@pytest.mark.parametrize("successes,n", [(0, 150), (150, 150), (1, 3), (139, 150), (75, 150)])
def test_a_wilson_interval_contains_its_share_and_stays_in_0_1(successes, n):
    lo, hi = wilson(successes, n)
    assert 0.0 <= lo <= successes / n <= hi <= 1.0
    assert hi - lo < 1.0


def test_wilson_at_half_of_100_is_the_textbook_interval():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_the_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [0.0, 0.5, 1.0, 1.0, 0.25, 0.75] * 20
    assert bootstrap_mean(values) == bootstrap_mean(values)
    lo, hi = bootstrap_mean(values)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_mean([1.0] * 10) == (1.0, 1.0)


def test_error_bars_are_distances_and_never_negative():
    below, above = error_bars([0.5, 0.0], [(0.4, 0.7), (1e-18, 0.02)])
    assert below == pytest.approx([0.1, 0.0]) and above == pytest.approx([0.2, 0.02])
