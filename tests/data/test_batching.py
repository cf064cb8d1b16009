import numpy as np
import pytest

from t2arec.data.batching import evaluation_examples, training_windows
from t2arec.data.types import DatasetReport, SequenceData


def toy_data(lengths=(12, 5, 3)):
    items, times = [], []
    for u, n in enumerate(lengths):
        items.append(np.arange(1, n + 1, dtype=np.int64) + 100 * u)
        times.append(1_600_000_000.0 + np.cumsum(np.arange(1, n + 1, dtype=np.float64)) + 0.5)
    item_ids = [None] + list(range(1, 400))
    report = DatasetReport("toy", "toy", "seconds", sum(lengths), len(lengths), 399, sum(lengths))
    return SequenceData(items, times, item_ids, list(range(len(lengths))), report)


@pytest.mark.parametrize("max_len,stride", [(4, None), (4, 2), (3, 1), (20, None)])
def test_every_training_interaction_but_the_first_is_a_target_exactly_once(max_len, stride):
    data = toy_data()
    w = training_windows(data, max_len, stride)
    for u, seq in enumerate(data.items):
        train = seq[:-2]
        got = sorted(w.targets[w.users == u][w.targets[w.users == u] > 0].tolist())
        assert got == sorted(train[1:].tolist())
    assert w.items.shape[1] == max_len


def test_window_targets_are_the_next_items_and_gaps_are_exact():
    data = toy_data((12,))
    w = training_windows(data, 4)
    # training part 1..10; targets from the end in runs of 4: 7..10, 3..6, 2
    assert w.targets.tolist() == [[7, 8, 9, 10], [3, 4, 5, 6], [0, 0, 0, 2]]
    assert w.items.tolist() == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 0, 0, 1]]
    # times are t_k = t_0 + k(k+1)/2, so the gap before item k is k; the first gap of a window is 0
    assert w.gaps[0].tolist() == [0.0, 7.0, 8.0, 9.0]
    assert w.next_gap.tolist() == [10.0, 6.0, 2.0]


def test_overlapping_windows_mask_context_positions():
    data = toy_data((12,))
    w = training_windows(data, 4, stride=2)
    assert w.items[0].tolist() == [6, 7, 8, 9] and w.targets[0].tolist() == [0, 0, 9, 10]


def test_evaluation_examples_follow_leave_one_out():
    data = toy_data((12, 5))
    valid = evaluation_examples(data, "valid", 3)
    test = evaluation_examples(data, "test", 3)
    assert valid.targets.tolist() == [11, 104] and test.targets.tolist() == [12, 105]
    assert valid.items.tolist() == [[8, 9, 10], [101, 102, 103]]
    assert test.items.tolist() == [[9, 10, 11], [102, 103, 104]]
    assert test.next_gap.tolist() == [12.0, 5.0]
    assert test.target_times[0] == data.times[0][-1]


def test_short_inputs_are_left_padded():
    data = toy_data((3,))
    valid = evaluation_examples(data, "valid", 4)
    assert valid.items.tolist() == [[0, 0, 0, 1]] and valid.gaps.tolist() == [[0.0, 0.0, 0.0, 0.0]]
