import math

import numpy as np
import pytest
import torch

from t2arec.evaluate import metrics_from_ranks, target_ranks, time_segments


def test_ranks_are_pessimistic_on_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2],   # target item 2 (score 0.5) tied with item 3
                           [0.9, 0.1, 0.3, 0.3],   # target item 1 is strictly best
                           [0.0, 0.0, 0.0, 0.0]])  # all tied: the target ranks last
    targets = torch.tensor([2, 1, 4])
    assert target_ranks(scores, targets).tolist() == [1, 0, 3]


def test_metrics_hand_computed():
    ranks = np.array([0, 1, 4, 9, 10, 50])
    m = metrics_from_ranks(ranks, ks=(5, 10))
    assert m["recall@5"] == pytest.approx(3 / 6)
    assert m["recall@10"] == pytest.approx(4 / 6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 6)
    ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert m["ndcg@10"] == pytest.approx(ndcg10)


def test_segments_split_by_target_time_into_equal_parts():
    times = np.array([50.0, 10.0, 40.0, 20.0, 30.0, 60.0, 70.0, 80.0])
    segs = time_segments(times, 4)
    assert [s.tolist() for s in segs] == [[1, 3], [2, 4], [0, 5], [6, 7]]


def test_nan_scores_never_help_the_target():
    nan = float("nan")
    scores = torch.tensor([[0.1, nan, 0.3, 0.2],   # target item 3 (0.3): the NaN item counts above it
                           [nan, nan, nan, nan],   # a diverged row: the target ranks last
                           [0.5, 0.1, nan, 0.2]])  # target item 1 (0.5)
    ranks = target_ranks(scores, torch.tensor([3, 2, 1]))
    assert ranks.tolist() == [1, 3, 1]
    # with NaN read as "no better than the target" the ranks would be [0, 0, 0] and every metric 1
    m = metrics_from_ranks(ranks.numpy(), ks=(1, 2, 10))
    assert m["recall@1"] == 0.0 and m["mrr@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["recall@2"] == pytest.approx(2 / 3) and m["mrr@2"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    assert m["ndcg@2"] == pytest.approx(2 / math.log2(3) / 3)
    assert m["recall@10"] == 1.0 and m["mrr@10"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 2) / 3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(3)) / 3)
