import math

import pytest

from t2arec.experiments.compare import median_epoch_seconds, rank_metric, summarise, to_markdown
from t2arec.experiments.report import mean_std, paired_ttest


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_paired_ttest_matches_the_closed_form_for_three_pairs():
    a, b = [1.0, 2.0, 3.0], [0.5, 1.8, 2.1]
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    t = mean / (sd / math.sqrt(3))
    # Student's t with 2 degrees of freedom has a closed-form two-sided tail: 1 - |t| / sqrt(t^2 + 2)
    assert paired_ttest(a, b) == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), rel=1e-9)


def test_paired_ttest_is_undefined_without_variation_or_pairs():
    assert paired_ttest([0.3], [0.2]) is None
    assert paired_ttest([0.3, 0.4], [0.2, 0.3]) is None  # every difference equal


def metrics(ndcg: float) -> dict[str, float]:
    return {"recall@10": 2 * ndcg, "mrr@10": ndcg / 2, "ndcg@10": ndcg}


def test_best_is_bold_with_a_star_when_significant_and_runner_up_underlined():
    rows = {"weak": [metrics(v) for v in (0.01, 0.012, 0.011)],
            "strong": [metrics(v) for v in (0.050, 0.052, 0.051)],
            "middle": [metrics(v) for v in (0.030, 0.0305, 0.0302)]}
    summary = summarise(rows, [1, 2, 3])
    rank = rank_metric(rows, "ndcg@10")
    assert (rank["best"], rank["runner_up"], rank["significant"]) == ("strong", "middle", True)
    text = to_markdown(summary, "t")
    strong_line = next(line for line in text.splitlines() if line.startswith("| strong"))
    middle_line = next(line for line in text.splitlines() if line.startswith("| middle"))
    weak_line = next(line for line in text.splitlines() if line.startswith("| weak"))
    assert "**0.0510 ± 0.0010**\\*" in strong_line
    assert "<u>0.0302 ± 0.0003</u>" in middle_line
    assert "**" not in weak_line and "<u>" not in weak_line


def test_no_star_when_the_gap_is_within_seed_noise():
    rows = {"a": [metrics(v) for v in (0.050, 0.040, 0.060)], "b": [metrics(v) for v in (0.045, 0.055, 0.047)]}
    rank = rank_metric(rows, "ndcg@10")
    assert rank["best"] == "a" and not rank["significant"]
    assert "\\*" not in to_markdown(summarise(rows, [1, 2, 3]), "t")


def test_training_time_at_the_median_epoch_ignores_a_paused_epoch():
    # one epoch of five was paused for 1,000 s: the wall-clock total keeps it, the median epoch does not
    history = [{"seconds": s} for s in (60.0, 62.0, 1060.0, 58.0, 61.0)]
    assert median_epoch_seconds({"history": history}) == pytest.approx(5 * 61.0)
    assert median_epoch_seconds({"history": history[:4]}) == pytest.approx(4 * 61.0)  # even count: the mean of the middle two
    assert median_epoch_seconds({"train_seconds": 10.0}) is None
