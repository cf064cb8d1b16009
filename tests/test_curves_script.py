"""benchmarks/curves.py on a finished run and on one stopped mid-training (train_state.pt only)."""
import json
import sys

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


def history(scores):
    return [{"epoch": e, "step": 10 * e, **({"valid_ndcg@10": s} if s is not None else {})}
            for e, s in enumerate(scores, start=1)]


@pytest.fixture()
def runs(tmp_path):
    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    finished.mkdir(), stopped.mkdir()
    (finished / "results.json").write_text(json.dumps(
        {"history": history([0.1, None, 0.3]), "valid": {"ndcg@10": 0.35}, "valid_no_tta": {"ndcg@10": 0.3},
         "best_step": 30, "train_seconds": 12.0}))
    progress = {"history": history([0.05, 0.2]), "best_score": 0.2, "best_step": 20, "seconds": 5.0}
    torch.save({"progress": progress}, stopped / "train_state.pt")
    return finished, stopped


def test_tables_read_finished_and_stopped_runs(runs, tmp_path):
    curves = load_benchmark("curves")
    loaded = {str(d): curves.load_progress(d) for d in runs}
    summary = curves.summary_table(loaded)
    assert f"| {runs[0]} | 3 | 30 | 0.3000 | 30 | 12 | yes |" in summary
    assert f"| {runs[1]} | 2 | 20 | 0.2000 | 20 | 5 | no |" in summary
    table = curves.curve_table(loaded, every=1)
    assert "| 1 | 0.1000 | 0.0500 |" in table and "| 2 |  | 0.2000 |" in table and "| 3 | 0.3000 |  |" in table
    # every 2nd epoch: a row shows the last validation of the 2 epochs up to it; the last epoch (3) is added
    assert curves.curve_table(loaded, every=2).splitlines()[2:] == ["| 2 | 0.1000 | 0.2000 |", "| 3 | 0.3000 | 0.2000 |"]
    curves.plot(loaded, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_folder_without_a_run_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="neither results.json nor train_state.pt nor progress.json"):
        load_benchmark("curves").load_progress(tmp_path)


def test_a_saved_progress_replaces_the_training_state(runs, monkeypatch, capsys):
    curves = load_benchmark("curves")
    finished, stopped = runs
    monkeypatch.setattr(sys, "argv", ["curves.py", str(finished), str(stopped), "--save-progress"])
    curves.main()
    before = capsys.readouterr().out
    assert (stopped / "progress.json").exists() and not (finished / "progress.json").exists()
    (stopped / "train_state.pt").unlink()
    monkeypatch.setattr(sys, "argv", ["curves.py", str(finished), str(stopped)])
    curves.main()
    assert capsys.readouterr().out == before
