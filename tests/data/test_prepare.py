"""Tests for t2arec.data.prepare: ordering, repeated k-core, id remapping, report, ML-100K counts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from t2arec.data.prepare import dataset_summary, k_core, prepare
from t2arec.data.readers import read_interactions
from t2arec.data.types import DataError, Interactions

ML100K = Path(__file__).parents[2].parent / "shared/data/ml-100k.inter"


def log(rows: list[tuple[str, str, float]], **kwargs) -> Interactions:
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "time": pl.Float64},
                         orient="row")
    fields = {"source": "test", "time_unit": "seconds", "rows_read": len(rows)} | kwargs
    return Interactions(frame=frame, **fields)


def raw_sequences(data) -> dict:
    """user raw id -> list of raw item ids, in sequence order."""
    return {data.user_ids[u]: [data.item_ids[i] for i in seq] for u, seq in enumerate(data.items)}


def test_sorts_by_time_and_keeps_file_order_for_ties() -> None:
    rows = [("u", "c", 5.0), ("u", "b", 1.0), ("u", "z", 3.0), ("u", "a", 3.0), ("u", "m", 3.0)]
    data = prepare(log(rows), "ties", min_count=1)
    assert raw_sequences(data) == {"u": ["b", "z", "a", "m", "c"]}
    assert data.times[0].tolist() == [1.0, 3.0, 3.0, 3.0, 5.0]
    assert data.items[0].dtype == np.int64 and data.times[0].dtype == np.float64


def hand_made_core() -> list[tuple[str, str, float]]:
    """16 rows where min_count=3 needs three removal passes.

    Pass 1 drops u5, u6 (2 rows each; items x, y go with them), pass 2 drops item e (now only in
    u4), pass 3 drops u4 (left with a, b). Survivors: u1..u3 x a, b, c = 9 rows, 7 removed.
    """
    seqs = {"u1": "abc", "u2": "abc", "u3": "abc", "u4": "abe", "u5": "ex", "u6": "ey"}
    return [(u, item, float(t)) for u, items in seqs.items() for t, item in enumerate(items)]


def test_repeated_k_core_needs_several_passes() -> None:
    rows = hand_made_core()
    frame = log(rows).frame
    # One simultaneous pass is not enough: u4 still has a, b, e afterwards.
    one_pass = frame.filter((pl.len().over("user") >= 3) & (pl.len().over("item") >= 3))
    assert one_pass.height == 12
    kept, removed = k_core(frame, 3)
    assert (kept.height, removed) == (9, 7)
    data = prepare(log(rows), "core", min_count=3)
    assert raw_sequences(data) == {"u1": ["a", "b", "c"], "u2": ["a", "b", "c"], "u3": ["a", "b", "c"]}
    assert data.report.dropped == {"k_core_filter": 7}
    assert (data.report.users, data.report.items, data.report.interactions) == (3, 3, 9)


def test_integer_ids_sort_numerically_and_become_ints() -> None:
    rows = [("10", "30", 1.0), ("10", "4", 2.0), ("10", "200", 3.0),
            ("2", "4", 1.0), ("2", "30", 2.0), ("2", "4", 3.0), ("-1", "200", 9.0),
            ("-1", "30", 10.0), ("-1", "4", 11.0)]
    data = prepare(log(rows), "ints", min_count=1)
    assert data.user_ids == [-1, 2, 10]
    assert data.item_ids == [None, 4, 30, 200]
    assert [seq.tolist() for seq in data.items] == [[3, 2, 1], [1, 2, 1], [2, 1, 3]]
    assert all(type(i) is int for i in data.item_ids[1:])
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 3, 9)


def test_string_ids_sort_lexically_and_stay_strings() -> None:
    rows = [("b", "10", 1.0), ("b", "9", 2.0), ("b", "x", 3.0),
            ("a", "9", 1.0), ("a", "10", 2.0), ("a", "9", 3.0)]
    data = prepare(log(rows), "str", min_count=1)
    assert data.user_ids == ["a", "b"]
    assert data.item_ids == [None, "10", "9", "x"]  # one non-integer id makes all items strings
    assert [seq.tolist() for seq in data.items] == [[2, 1, 2], [1, 2, 3]]


def test_ids_with_leading_zeros_are_not_merged() -> None:
    rows = [("u", "007", 1.0), ("u", "7", 2.0), ("u", "+7", 3.0)]
    data = prepare(log(rows), "zeros", min_count=1)
    assert data.item_ids == [None, "+7", "007", "7"]
    assert data.num_items == 3


def test_report_merges_reader_drops_and_keeps_metadata(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    lines = ["user,item,time"] + [f"{u},{i},{u * 10 + i}" for u in range(1, 4) for i in range(1, 4)]
    path.write_text("\n".join(lines + ["1,1,11", "4,1,1"]) + "\n")  # one duplicate, one lone user
    data = prepare(read_interactions(path, duplicates="drop"), "tiny", min_count=2)
    report = data.report
    assert report.to_dict() == {
        "name": "tiny", "source": str(path), "time_unit": "seconds", "rows_read": 11,
        "users": 3, "items": 3, "interactions": 9,
        "dropped": {"duplicates": 1, "k_core_filter": 1},
    }
    summary = dataset_summary(data)
    for fragment in ("tiny", str(path), "seconds", "11", "duplicates 1", "k_core_filter 1",
                     "users        3", "items        3", "9", "3.00"):
        assert fragment in summary, summary


def test_nothing_left_is_an_error() -> None:
    rows = [("u1", "a", 1.0), ("u1", "b", 2.0), ("u2", "a", 1.0)]
    with pytest.raises(DataError, match="no interactions left.*min_count=10"):
        prepare(log(rows), "tiny", min_count=10)


def test_users_shorter_than_three_are_an_error() -> None:
    rows = [("u1", "a", 1.0), ("u1", "b", 2.0), ("u1", "c", 3.0), ("u2", "a", 1.0), ("u2", "b", 2.0)]
    with pytest.raises(DataError, match=r"1 user\(s\).*'u2' has 2"):
        prepare(log(rows), "short", min_count=1)


@pytest.mark.skipif(not ML100K.exists(), reason="shared ML-100K file not present")
def test_ml100k_matches_recbole_counts() -> None:
    data = prepare(read_interactions(ML100K), "ml-100k", min_count=10)
    assert (data.num_users, data.num_items, data.num_interactions) == (943, 1152, 97953)
    assert data.report.rows_read == 100_000
    assert data.report.dropped == {"k_core_filter": 100_000 - 97_953}
    assert all(np.all(np.diff(t) >= 0) for t in data.times)
    assert min(len(s) for s in data.items) >= 10
    counts = np.bincount(np.concatenate(data.items), minlength=data.num_items + 1)
    assert counts[0] == 0 and counts[1:].min() >= 10
    assert data.user_ids[:3] == [1, 2, 3] and data.item_ids[0] is None
