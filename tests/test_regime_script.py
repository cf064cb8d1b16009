"""benchmarks/regime.py end to end on a tiny file: runs, tables, replayed patience and subsampling."""
import json
import sys

from t2arec.data.synthetic import make_synthetic

from tests.benchmark_scripts import load_benchmark


def test_replay_stops_where_a_shorter_patience_would_have():
    regime = load_benchmark("regime")
    history = [{"step": 10, "valid_ndcg@10": 0.1}, {"step": 20}, {"step": 30, "valid_ndcg@10": 0.3},
               {"step": 40, "valid_ndcg@10": 0.2}, {"step": 50, "valid_ndcg@10": 0.5}]
    assert regime.replay(history, 10) == (0.3, 30, 40)
    assert regime.replay(history, 20) == (0.5, 50, None)  # would not have stopped within the run


def test_replay_can_also_wait_a_fraction_of_the_best_step():
    regime = load_benchmark("regime")
    history = [{"step": s, "valid_ndcg@10": v} for s, v in [(100, 0.1), (200, 0.3), (300, 0.2), (400, 0.2),
                                                              (500, 0.4), (600, 0.3), (700, 0.3)]]
    assert regime.replay(history, 100) == (0.3, 200, 300)
    assert regime.replay(history, 100, 0.6) == (0.3, 200, 400)  # waits ceil(0.6 * 200) = 120 steps
    assert regime.replay(history, 100, 1.5) == (0.4, 500, None)  # waits 300 steps, reaches 500, then 750
    assert regime.parse_patience("2000+0.3") == (2000, 0.3) and regime.parse_patience("500") == (500, 0.0)


def test_replay_sees_the_validations_inside_epochs():
    regime = load_benchmark("regime")
    # an epoch row's valid_ndcg@10 is its last validation; the replay must step through all of them
    history = [{"step": 40, "valid_ndcg@10": 0.2, "validations": [{"step": 20, "ndcg@10": 0.5},
                                                                  {"step": 40, "ndcg@10": 0.2}]},
               {"step": 80, "valid_ndcg@10": 0.6, "validations": [{"step": 60, "ndcg@10": 0.3},
                                                                  {"step": 80, "ndcg@10": 0.6}]}]
    assert regime.replay(history, 40) == (0.5, 20, 60)
    assert regime.replay(history, 100) == (0.6, 80, None)


def test_the_study_runs_its_variants_and_writes_the_tables(tmp_path, monkeypatch):
    regime = load_benchmark("regime")
    frame = make_synthetic(num_users=50, num_items=30, seed=1).frame
    data = tmp_path / "tiny.inter"
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    + "".join(f"{u}\t{i}\t{t:.0f}\n" for u, i, t in frame.iter_rows()))
    out = tmp_path / "study"
    monkeypatch.setattr(sys, "argv", ["regime.py", "--data", str(data), "--max-len", "10", "--seeds", "1",
                                      "--variants", "gru4rec:train.stride_fraction=0.5", "gru4rec",
                                      "--eval-steps", "1", "--patience-steps", "3", "--patience-grid", "1", "3",
                                      "--subsample-users", "40", "--overrides", "train.epochs=3", "--out", str(out),
                                      "--quiet"])
    regime.main()
    text = (out / "regime.md").read_text()
    assert "| gru4rec | train.stride_fraction=0.5 |" in text and "| gru4rec | defaults |" in text
    # two replayed rows and one row of where the hits rank
    assert text.count("| gru4rec+train.stride_fraction=0.5 |") == 3 and "| gru4rec | 3 |" in text
    run = json.loads((out / "runs" / "gru4rec" / "seed-1" / "results.json").read_text())
    profile = [run[split][metric] for split in ("valid_no_tta", "test_no_tta") for metric in ("recall@10", "mrr@10")]
    assert "| gru4rec | " + " | ".join(f"{value:.4f}" for value in profile) + " |" in text
    assert len(list((out / "data").glob("*.inter"))) == 1  # the subsampled copy, outside the repository


def test_most_popular_ranks_items_by_training_counts_only():
    import math

    import numpy as np
    import pytest

    from t2arec.data.types import DatasetReport, SequenceData

    regime = load_benchmark("regime")
    # training parts [1, 1, 2] and [1, 2]: item 1 counts 3, item 2 counts 2, item 3 (a held-out target) 0
    items = [np.array([1, 1, 2, 3, 1]), np.array([1, 2, 1, 2])]
    report = DatasetReport(name="tiny", source="memory", time_unit="s", rows_read=9, users=2, items=3,
                           interactions=9)
    data = SequenceData(items=items, times=[np.arange(len(s), dtype=float) for s in items],
                        item_ids=[None, 1, 2, 3], user_ids=[0, 1], report=report)
    popular = regime.most_popular(data)
    assert popular["valid"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)  # targets 3 (third) and 1 (first)
    assert popular["test"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)  # targets 1 (first) and 2 (second)
