"""Coverage / AMR metrics on hand-made RMSD matrices with hand-computed expectations."""
import numpy as np
import pytest

from benchmark.metrics import THRESHOLDS, aggregate, coverage_metrics


def test_threshold_grid():
    assert len(THRESHOLDS) == 20
    assert THRESHOLDS[0] == 0.0 and THRESHOLDS[-1] == pytest.approx(2.375)


def test_hand_computed_matrix():
    # refs x samples; row minima 0.5, 1.0, 2.0 ; column minima 0.5, 1.0, 1.5, 2.0
    d = np.array([[0.5, 3.0, 1.5, 4.0],
                  [2.0, 1.0, 3.0, 2.5],
                  [2.5, 2.0, 3.0, 2.0]])
    m = coverage_metrics(d, thresholds=np.array([0.5, 1.0, 1.25, 2.1]))
    assert m["recall_coverage"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])  # strict '<'
    assert m["precision_coverage"] == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert m["recall_amr"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert m["precision_amr"] == pytest.approx((0.5 + 1.0 + 1.5 + 2.0) / 4)


def test_failed_sample_columns_count_against_precision_only():
    d = np.array([[0.5, np.nan, 1.5],
                  [2.0, np.nan, 0.2]])
    m = coverage_metrics(d, thresholds=np.array([1.0, 3.0]))
    assert m["n_failed_samples"] == 1
    assert m["recall_coverage"] == pytest.approx([1.0, 1.0])  # both refs covered by live samples
    assert m["precision_coverage"] == pytest.approx([2 / 3, 2 / 3])  # failed sample stays in denominator
    assert m["recall_amr"] == pytest.approx((0.5 + 0.2) / 2)
    assert m["precision_amr"] == pytest.approx((0.5 + 0.2) / 2)  # failed sample left out of the mean


def test_bad_reference_row_dropped_and_isolated_nan_is_infinite():
    d = np.array([[0.4, 0.9],
                  [np.nan, np.nan],
                  [np.nan, 1.6]])
    m = coverage_metrics(d, thresholds=np.array([1.0]))
    assert m["n_bad_references"] == 1 and m["n_references"] == 2
    assert m["recall_coverage"] == pytest.approx([0.5])
    assert m["recall_amr"] == pytest.approx((0.4 + 1.6) / 2)
    assert m["precision_coverage"] == pytest.approx([1.0])


def test_all_samples_failed():
    m = coverage_metrics(np.full((3, 4), np.nan))
    assert m["n_failed_samples"] == 4
    assert max(m["recall_coverage"]) == 0 and max(m["precision_coverage"]) == 0
    assert np.isnan(m["recall_amr"]) and np.isnan(m["precision_amr"])


def test_aggregate_mean_std():
    a = coverage_metrics(np.array([[0.1]]), thresholds=np.array([0.5]))
    b = coverage_metrics(np.array([[0.9]]), thresholds=np.array([0.5]))
    agg = aggregate([a, b])
    assert agg["recall_coverage_mean"] == pytest.approx([0.5])
    assert agg["recall_coverage_std"] == pytest.approx([0.5])
    assert agg["recall_amr_mean"] == pytest.approx(0.5)
