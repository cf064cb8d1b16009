"""benchmarks/patience_audit.py: validations after the best and the rise before it, from results.json."""
import json
import sys

import pytest

from tests.benchmark_scripts import load_benchmark


def results(history, best_step, steps, patience=2000):
    return {"history": history, "best_step": best_step, "steps": steps,
            "config": {"train": {"patience_steps": patience}}}


def test_counts_validations_after_the_best_and_the_rise_before_it():
    audit = load_benchmark("patience_audit").audit
    # one validation per epoch of 855 steps: best at epoch 3, three worse ones after it
    history = [{"epoch": e, "step": 855 * e, "valid_ndcg@10": s}
               for e, s in enumerate([0.05, 0.09, 0.12, 0.11, 0.115, 0.10], start=1)]
    row = audit(results(history, best_step=2565, steps=5130), window=1000)
    assert row["steps_per_epoch"] == 855 and row["validations_after_best"] == 3
    assert row["best"] == 0.12 and row["stop_step"] == 5130 and row["patience_steps"] == 2000
    assert row["rise"] == pytest.approx(0.12 - 0.05)  # the best as of step 1565 is epoch 1's
    # the best came sooner than the window: no rise to give
    assert audit(results(history, best_step=2565, steps=5130), window=4000)["rise"] is None


def test_reads_the_validations_made_inside_epochs():
    audit = load_benchmark("patience_audit").audit
    history = [{"epoch": 1, "step": 500, "valid_ndcg@10": 0.3,
                "validations": [{"step": 200, "ndcg@10": 0.1}, {"step": 400, "ndcg@10": 0.3}]},
               {"epoch": 2, "step": 1000, "valid_ndcg@10": 0.2,
                "validations": [{"step": 600, "ndcg@10": 0.25}, {"step": 800, "ndcg@10": 0.2}]}]
    row = audit(results(history, best_step=400, steps=800), window=200)
    assert row["steps_per_epoch"] == 500 and row["validations_after_best"] == 2
    assert row["best"] == 0.3 and row["rise"] == pytest.approx(0.2)


def test_prints_a_row_per_run(tmp_path, monkeypatch, capsys):
    history = [{"epoch": e, "step": 100 * e, "valid_ndcg@10": 0.1 * e} for e in (1, 2, 3)]
    run = tmp_path / "runs" / "sasrec" / "seed-1"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results(history, best_step=300, steps=300)))
    monkeypatch.setattr(sys, "argv", ["patience_audit.py", str(tmp_path / "runs"), "--window", "150",
                                      "--out", str(tmp_path / "audit.md")])
    load_benchmark("patience_audit").main()
    assert "| sasrec/seed-1 | 100 | 2,000 | 0 | 0.3000 | 300 | 300 | +0.2000 |" in capsys.readouterr().out
    assert (tmp_path / "audit.md").exists()


def test_a_folder_without_runs_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["patience_audit.py", str(tmp_path)])
    with pytest.raises(SystemExit, match="no results.json"):
        load_benchmark("patience_audit").main()
