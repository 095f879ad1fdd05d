import math

import pytest

from bench import stats


def test_median_and_percentiles_interpolate_like_numpy():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.percentile([10, 20, 30, 40, 50], 99) == pytest.approx(49.6)
    assert stats.percentile([10, 20, 30, 40, 50], 0) == 10
    assert stats.percentile([7], 99) == 7


def test_missing_values_give_none_and_nan_is_ignored():
    assert stats.median([]) is None
    assert stats.median([math.nan, 5.0]) == 5.0
    with pytest.raises(ValueError):
        stats.percentile([1, 2], 101)


def test_ratio_needs_both_sides_and_a_non_zero_peer():
    assert stats.ratio(50.0, 100.0) == 0.5
    assert stats.ratio(None, 100.0) is None
    assert stats.ratio(50.0, None) is None
    assert stats.ratio(50.0, 0) is None


def test_formatting():
    assert stats.format_value(None, "µs") == "—"
    assert stats.format_value(123456.7, "msg/s") == "123,457 msg/s"
    assert stats.format_value(12.345, "") == "12.3"
    assert stats.format_value(1.2345, "µs") == "1.23 µs"
    assert stats.format_value(3.0, "", integer=True) == "3"
    assert stats.format_ratio(0.456) == "0.46×"
    assert stats.format_ratio(None) == "—"
