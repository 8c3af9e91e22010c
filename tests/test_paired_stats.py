"""The paired statistics every benchmark table uses, on numbers worked out by hand (Student's t table values)."""

import sys

import pytest

from train_fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from paired_stats import format_interval, interval, paired_differences, seeds_for_half_width, t_factor  # noqa: E402


def test_t_factors_are_students():
    assert t_factor(2) == pytest.approx(12.706, abs=1e-3)
    assert t_factor(5) == pytest.approx(2.776, abs=1e-3)
    assert t_factor(30) == pytest.approx(2.045, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        t_factor(1)


def test_interval_of_known_values():
    result = interval([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sample std sqrt(2.5)
    assert result["mean"] == 3 and result["std"] == pytest.approx(1.5811, abs=1e-4) and result["n"] == 5
    assert result["half_width"] == pytest.approx(2.776 * 1.5811 / 5**0.5, abs=1e-3)  # 1.963
    assert format_interval(result, signed=True) == "+3.00 ± 1.96"
    assert interval([4.0]) == {"mean": 4.0, "std": None, "half_width": None, "n": 1}


def test_seeds_needed_for_a_one_point_interval():
    # std 3 points: n = 37 gives 2.028 * 3 / sqrt(37) = 1.0002 > 1; n = 38 gives 2.026 * 3 / sqrt(38) = 0.986.
    assert seeds_for_half_width(3.0, 1.0) == 38
    # std 1 point: n = 6 gives 2.571 / sqrt(6) = 1.050; n = 7 gives 2.447 / sqrt(7) = 0.925.
    assert seeds_for_half_width(1.0, 1.0) == 7
    assert seeds_for_half_width(0.0, 1.0) == 2
    assert seeds_for_half_width(100.0, 0.01, maximum=50) is None


def test_paired_differences_never_drop_a_seed():
    assert paired_differences({0: 5.0, 1: 7.0}, {1: 6.0, 0: 4.0}) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"same seeds: \[0, 1\] against the baseline's \[0\]"):
        paired_differences({0: 5.0, 1: 7.0}, {0: 4.0})
