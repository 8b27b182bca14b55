import numpy as np
import pytest

from featx.evaluate.metrics import area_ap, class_recalls, mean_class_recall, voc07_ap


def test_perfect_and_worst_rankings():
    assert voc07_ap([3, 2, 1], [1, 1, -1]) == 1.0 and area_ap([3, 2, 1], [1, 1, -1]) == 1.0
    # one positive ranked last of 4: precision 1/4 at recall 1
    assert voc07_ap([4, 3, 2, 1], [-1, -1, -1, 1]) == pytest.approx(0.25)
    assert area_ap([4, 3, 2, 1], [-1, -1, -1, 1]) == pytest.approx(0.25)


def test_hand_worked_ranking_where_11_point_and_area_differ():
    # ranking: +, -, +, -, -  with 2 positives
    # precision/recall after each: (1, .5) (.5, .5) (2/3, 1) (.5, 1) (.4, 1)
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, 1, -1, -1]
    # 11-point: t = 0..0.5 -> max precision at recall >= t = 1 (6 points); t = 0.6..1 -> 2/3 (5 points)
    assert voc07_ap(scores, labels) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # area: recall 0 -> .5 at precision 1, .5 -> 1 at precision 2/3
    assert area_ap(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc07_ap(scores, labels) != pytest.approx(area_ap(scores, labels))


def test_difficult_images_are_ignored():
    # a difficult image ranked first changes nothing; as a negative it would
    assert voc07_ap([5, 4, 3], [0, 1, -1]) == 1.0
    assert voc07_ap([5, 4, 3], [-1, 1, -1]) == pytest.approx(0.5)
    assert area_ap([5, 4, 3, 2], [1, 0, -1, 1]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_mean_class_recall():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 2]
    assert np.allclose(class_recalls(y_true, y_pred, 3), [2 / 3, 1 / 2, 1])
    assert mean_class_recall(y_true, y_pred, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class without test images does not count (and is not a zero)
    assert mean_class_recall([0, 0], [0, 1], 4) == pytest.approx(0.5)


def test_no_positive_is_nan_not_zero():
    assert np.isnan(voc07_ap([1, 2], [-1, 0])) and np.isnan(area_ap([1, 2], [-1, -1]))


class _Scorer:
    """A stand-in classifier with fixed outputs (what Metric.score asks of an SVM)."""

    def __init__(self, scores, predicted):
        self.scores, self.predicted = np.asarray(scores, float), np.asarray(predicted)

    def decision_function(self, X):
        return self.scores

    def predict(self, X):
        return self.predicted


def test_one_record_per_metric_read_by_datasets_pipelines_and_results(tmp_path):
    from featx.data.datasets import DATASETS
    from featx.errors import ConfigError
    from featx.evaluate.metrics import METRICS, metric_of
    from featx.evaluate.results import read_result
    assert {s.metric for s in DATASETS.values()} <= set(METRICS)
    for m in METRICS.values():
        assert metric_of(m.task) is m and metric_of(name=m.name) is m
    ap, mcr = METRICS["map"], METRICS["mcr"]
    # the scores each computes, and the one a headline averages
    got = ap.score(_Scorer([[3, 1], [2, 2], [1, 3]], None), None, np.array([[1, -1], [1, 1], [-1, 0]]), 2)
    assert set(got) == {"ap11", "ap_area"} and ap.headline == "ap11"
    np.testing.assert_allclose(got["ap11"], [1.0, 1.0])
    got = mcr.score(_Scorer(None, [0, 1, 1, 2]), None, np.array([0, 1, 2, 2]), 3)
    np.testing.assert_allclose(got["recall"], [1, 1, 0.5])
    with pytest.raises(ValueError, match="no featx metric"):
        metric_of(name="top-5 error")
    # a result file naming a metric this featx does not know is not read as a result
    bad = tmp_path / "r.json"
    bad.write_text('{"metric": "top-5 error", "runs": []}')
    with pytest.raises(ConfigError, match="r.json: not a featx result file"):
        read_result(bad)
