"""Tests for t2arec.data.synthetic: determinism, shape of the data, interest shift, learnability."""
from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from t2arec.data.prepare import prepare
from t2arec.data.synthetic import item_interests, make_synthetic, target_interest_overlap


@pytest.fixture(scope="module")
def default_log():
    return make_synthetic()


def test_same_seed_same_frame_different_seed_different() -> None:
    a = make_synthetic(num_users=200, seed=3)
    b = make_synthetic(num_users=200, seed=3)
    c = make_synthetic(num_users=200, seed=4)
    assert a.frame.equals(b.frame)
    assert not a.frame.equals(c.frame)
    assert a.source == "synthetic(users=200,items=600,interests=12,mean_length=40,shift=1,seed=3)"


def test_frame_layout_and_metadata(default_log) -> None:
    frame = default_log.frame
    assert frame.columns == ["user", "item", "time"]
    assert frame.dtypes == [pl.String, pl.String, pl.Float64]
    assert default_log.time_unit == "seconds"
    assert default_log.rows_read == frame.height
    assert default_log.dropped == {}
    assert frame["time"].is_sorted()  # a log in time order
    assert frame["user"].n_unique() == 1000
    assert frame["item"].n_unique() == 600


def test_lengths_counts_and_ten_core(default_log) -> None:
    lengths = default_log.frame.group_by("user").len()["len"]
    assert lengths.min() >= 10
    assert 15 <= lengths.min() and lengths.max() <= 120
    assert 35 <= lengths.mean() <= 45  # mean_length=40
    item_counts = default_log.frame.group_by("item").len()["len"]
    assert item_counts.min() >= 10
    data = prepare(default_log, "synthetic", min_count=10)
    assert (data.num_users, data.num_items) == (1000, 600)
    assert data.report.dropped == {"k_core_filter": 0}


def test_time_structure(default_log) -> None:
    data = prepare(default_log, "synthetic", min_count=10)
    gaps = np.concatenate([np.diff(t) for t in data.times])
    assert gaps.min() >= 5  # a user's own events never tie
    # Two regimes: most gaps are within-session minutes, the rest between-session hours/days.
    assert 0.6 < np.mean(gaps < 3600) < 0.9
    assert np.median(gaps[gaps < 3600]) == pytest.approx(240, rel=0.2)
    assert np.median(gaps[gaps >= 3600]) > 6 * 3600
    span = default_log.frame["time"].max() - default_log.frame["time"].min()
    assert 300 * 86400 < span < 500 * 86400


def test_shift_moves_test_targets_away_from_the_main_training_interest() -> None:
    interests = item_interests(600, 12, 0)
    stationary = target_interest_overlap(make_synthetic(shift=0.0), interests)
    shifted = target_interest_overlap(make_synthetic(shift=1.0), interests)
    assert stationary > 0.3
    assert shifted < 0.1
    assert stationary - shifted > 0.25


def test_item_interests_match_the_generator(default_log) -> None:
    interests = item_interests()
    assert sorted(interests) == sorted(default_log.frame["item"].unique().to_list())
    assert np.bincount(list(interests.values())).tolist() == [50] * 12


def test_sequence_structure_beats_popularity(default_log) -> None:
    """A first-order transition count (last item -> next) must beat popularity by a wide margin."""
    data = prepare(default_log, "synthetic", min_count=10)
    n = data.num_items + 1
    transitions = np.zeros((n, n))
    popularity = np.zeros(n)
    for seq in data.items:
        history = seq[:-1]  # training + validation items: the test input
        np.add.at(transitions, (history[:-1], history[1:]), 1.0)
        np.add.at(popularity, history, 1.0)
    popularity[0] = -np.inf
    top_popular = np.argsort(-popularity)[:10]
    hits_markov = hits_popular = 0
    for seq in data.items:
        scores = transitions[seq[-2]] + 1e-6 * popularity  # popularity only breaks ties
        hits_markov += seq[-1] in np.argsort(-scores)[:10]
        hits_popular += seq[-1] in top_popular
    assert hits_markov > 3 * hits_popular
    assert hits_markov / data.num_users > 0.3


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    make_synthetic()
    assert time.perf_counter() - start < 1.0


def test_small_and_custom_sizes() -> None:
    inter = make_synthetic(num_users=50, num_items=40, num_interests=4, mean_length=10, seed=1)
    lengths = inter.frame.group_by("user").len()["len"]
    assert lengths.len() == 50 and lengths.min() >= 10 and lengths.max() <= 30
    assert set(inter.frame["item"].unique().to_list()) <= {str(i) for i in range(1, 41)}


@pytest.mark.parametrize("kwargs", [
    {"shift": 1.5}, {"shift": -0.1}, {"num_interests": 1}, {"mean_length": 5},
    {"num_items": 10, "num_interests": 12}, {"num_users": 0},
])
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        make_synthetic(**kwargs)
