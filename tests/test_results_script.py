"""benchmarks/results.py end to end on a tiny dataset: it must keep working with the library."""
import sys

import pytest

from tests.benchmark_scripts import load_benchmark

TINY = ["data.synthetic_users=80", "data.synthetic_items=50", "train.epochs=1", "data.max_len=20"]


@pytest.fixture
def results_module(monkeypatch):
    module = load_benchmark("results")
    for name, (title, _) in list(module.DATASETS.items()):
        monkeypatch.setitem(module.DATASETS, name, (title, TINY))  # every dataset becomes tiny synthetic data
    return module


def test_the_results_document_is_assembled_with_its_command(results_module, tmp_path, monkeypatch):
    args = ["results.py", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--datasets", "ml-100k",
            "--models", "sasrec", "t2arec", "--seeds", "1", "--seed-models", "t2arec", "--more-seeds", "1", "2",
            "--ablate-seeds", "1", "--iterations", "1", "--quiet"]
    monkeypatch.setattr(sys, "argv", args)
    results_module.main()
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "python benchmarks/results.py --out" in text
    for heading in ("Overall performance (Table 2)", "Check against RecBole", "Ablation (Table 3)",
                    "Figure 6", "Figure 7", "Test-time throughput (Table 4)"):
        assert heading in text
    monkeypatch.setattr(sys, "argv", [*args[:5], "--assemble-only"])
    results_module.main()  # keeps the recorded command
    assert "--seed-models t2arec" in (tmp_path / "docs" / "results.md").read_text()


def test_each_dataset_keeps_its_section_and_command_and_sits_beside_the_paper(results_module, tmp_path, monkeypatch):
    common = ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--seeds", "1", "--ablate-seeds", "1",
              "--iterations", "1", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["results.py", *common, "--datasets", "synthetic-shift0", "--models", "t2arec",
                                      "--steps", "compare"])
    results_module.main()
    monkeypatch.setattr(sys, "argv", ["results.py", *common, "--datasets", "ml-1m", "--models", "sasrec", "t2arec",
                                      "--seed-models", "t2arec", "--more-seeds", "1", "2",
                                      "--steps", "compare", "ablate", "throughput"])
    results_module.main()
    text = (tmp_path / "docs" / "results.md").read_text()
    shift0, ml1m = text.index("## Synthetic, no interest shift"), text.index("## MovieLens-1M")
    assert shift0 < ml1m  # both sections, in the datasets' order, each under its own command
    assert "--datasets synthetic-shift0" in text[shift0:ml1m] and "--datasets ml-1m" in text[ml1m:]
    paper = text[text.index("### Beside the paper"):]
    assert "0.1648" in paper and "0.2932" in paper  # T2ARec's Table 2 cells from the paper
    assert "| caser | 0 | - / 0.1954" in paper  # a model without a run shows the paper's cell only
    assert "Table 3" in paper and "Table 4" in paper and "1.02" in paper


def test_a_hand_written_note_heads_its_section_and_paired_step_rows_appear(results_module, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "results" / "ml-1m").mkdir(parents=True)
    (docs / "results" / "ml-1m" / "note.md").write_text("**Stale: to be re-measured.**\n")
    monkeypatch.setattr(sys, "argv", ["results.py", "--out", str(tmp_path / "runs"), "--docs", str(docs), "--seeds", "1",
                                      "--quiet", "--datasets", "ml-1m", "--models", "t2arec", "--steps", "compare", "paired"])
    results_module.main()
    text = (docs / "results.md").read_text()
    section = text[text.index("## MovieLens-1M"):]
    assert section.index("--datasets ml-1m") < section.index("**Stale") < section.index("### Overall performance")
    assert "### T2ARec's test-time step, paired over test users" in section
    assert (tmp_path / "runs" / "ml-1m" / "paired.json").exists()


def test_set_overrides_one_models_runs_and_is_recorded(results_module, tmp_path, monkeypatch):
    import dataclasses
    import json

    from t2arec.models.sasrec import SASRecConfig

    runs = tmp_path / "runs" / "ml-1m" / "runs"
    monkeypatch.setattr(sys, "argv", ["results.py", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                                      "--seeds", "1", "--quiet", "--datasets", "ml-1m", "--models", "sasrec", "t2arec",
                                      "--steps", "compare", "paired", "--set", "t2arec:model.dropout=0.0"])
    results_module.main()
    t2arec = json.loads((runs / "t2arec+model.dropout=0.0" / "seed-1" / "results.json").read_text())
    sasrec = json.loads((runs / "sasrec" / "seed-1" / "results.json").read_text())
    assert t2arec["config"]["model"]["dropout"] == 0.0
    assert sasrec["config"]["model"] == json.loads(json.dumps(dataclasses.asdict(SASRecConfig())))  # untouched
    assert not (runs / "t2arec").exists()
    assert "--set t2arec:model.dropout=0.0" in (tmp_path / "docs" / "results" / "ml-1m" / "command.txt").read_text()


def test_a_section_keeps_one_command_per_set_of_steps(tmp_path):
    results = load_benchmark("results")
    path = tmp_path / "command.txt"
    train = "python benchmarks/results.py --datasets ml-1m --models t2arec --steps compare paired --quiet"
    speed = "python benchmarks/results.py --datasets ml-1m --models sasrec t2arec --steps throughput"
    results.record_command(path, train, ["compare", "paired"])
    results.record_command(path, speed, ["throughput"])
    assert path.read_text().splitlines() == [train, speed]  # Table 4 on quiet cores keeps the trainings' command
    again = train.replace("t2arec", "t2arec sasrec")
    results.record_command(path, again, ["compare", "paired"])
    assert path.read_text().splitlines() == [speed, again]  # a command that re-ran the same steps replaces it
    everything = "python benchmarks/results.py --datasets ml-1m"
    results.record_command(path, everything, list(results.STEPS))
    assert path.read_text().splitlines() == [everything]
