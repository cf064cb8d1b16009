"""Every experiment command end to end on a tiny synthetic dataset, sharing one output folder."""
import importlib
import json

import pytest
from typer.testing import CliRunner

from t2arec.cli import app
from t2arec.experiments import report

# the package exports functions named like these modules, so fetch the modules themselves
PLOTTING = [importlib.import_module(f"t2arec.experiments.{name}") for name in ("sweep", "segments", "throughput")]

# a fixed test-time step (empty grid: used untested): on runs this small no validation gain is
# significant, so with the grid every t2arec run would choose no step and the "(no TTA)" rows and the
# aligned variants would not be exercised (tests/experiments/test_no_step.py covers that case)
TINY = ["--epochs", "1", "--quiet", "data.synthetic_users=80", "data.synthetic_items=50", "data.max_len=20",
        "align.lr_grid=", "align.lr=1.0"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture
def figures(monkeypatch):
    """Capture every figure an experiment draws (and still write it)."""
    drawn = []
    original = report.save_figure

    def capture(fig, path):
        drawn.append(fig)
        original(fig, path)

    for module in PLOTTING:
        monkeypatch.setattr(module, "save_figure", capture)
    return drawn


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def assert_labelled(fig):
    for ax in fig.axes:
        if ax.get_legend() is not None or ax.get_lines() or ax.patches:
            assert ax.get_ylabel()
    assert any(ax.get_xlabel() for ax in fig.axes)


def test_compare_writes_table_2_with_mean_std_and_a_no_tta_row(out):
    text = invoke("compare", "--models", "sasrec,t2arec", "--seeds", "1,2", "--out", str(out), *TINY)
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["rows"]) == {"sasrec", "t2arec", "t2arec (no TTA)"}
    assert len(summary["rows"]["sasrec"]["ndcg@10"]["values"]) == 2
    markdown = (out / "compare.md").read_text()
    assert "| Model | Recall@10 | MRR@10 | NDCG@10 |" in markdown and "**" in markdown and "<u>" in markdown
    assert "±" in text
    # the training cost of each run, from its results.json
    run = json.loads((out / "runs" / "sasrec" / "seed-2" / "results.json").read_text())
    training = summary["training"]["sasrec"]
    assert training["steps"][1] == run["steps"] > 0 and training["train_seconds"][1] == run["train_seconds"] > 0
    assert training["best_step"][1] == run["best_step"]
    assert training["median_epoch_train_seconds"][1] > 0
    assert "| Model | minutes | minutes at the median epoch | steps | best step | step applied |" in markdown


def test_compare_reuses_finished_runs(out):
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/results.json")}
    invoke("compare", "--models", "sasrec,t2arec", "--seeds", "1,2", "--out", str(out), *TINY)
    assert before and before == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/results.json")}


def test_ablate_has_the_seven_rows_of_table_3(out):
    invoke("ablate", "--seeds", "1,", "--out", str(out), *TINY)
    rows = json.loads((out / "ablate.json").read_text())["rows"]
    assert list(rows) == ["T2ARec (full)", "w/o L_all", "w/o L_time", "w/o L_state", "w/o test-time L_all",
                          "w/o test-time L_time", "w/o test-time L_state"]
    assert rows["T2ARec (full)"]["trained"] == rows["w/o test-time L_time"]["trained"] == "t2arec"
    variant = json.loads((out / "runs" / "t2arec" / "seed-1" / "variants" / "only-state.json").read_text())
    assert variant["align_config"]["mu_time"] == 0.0 and variant["align_config"]["lr_grid"] == []
    paired = json.loads((out / "ablate.json").read_text())["paired"]["1"]
    assert set(paired["rows"]) == {"both", "state", "time"}  # the step on the same checkpoint, per loss set
    for row in paired["rows"].values():
        assert 0.0 <= row["p_value"] <= 1.0
        assert row["test_no_tta"] == json.loads((out / "runs" / "t2arec" / "seed-1" / "results.json").read_text())[
            "test_no_tta"]
    text = (out / "ablate.md").read_text()
    assert text.count("\n| ") == 8 + 4  # header + 7 rows, then header + 3 paired rows


def test_sweep_draws_figures_6_and_7(out, figures):
    invoke("sweep", "--seeds", "1,", "--train-grid", "0,0.1", "--test-grid", "0,0.01", "--out", str(out), *TINY)
    result = json.loads((out / "sweep.json").read_text())
    assert [p["value"] for p in result["train"]["mu_time"]] == [0.0, 0.1]
    assert [p["value"] for p in result["test"]["mu_state"]] == [0.0, 0.01]
    for name in ("sweep_train.png", "sweep_test.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert len(figures) == 2
    for fig in figures:
        assert_labelled(fig)
        assert all(ax.get_legend() is not None for ax in fig.axes[:2] if ax.get_lines())


def test_segments_plots_one_line_per_model(out, figures):
    invoke("segments", "--models", "sasrec,t2arec", "--seeds", "1,2", "--out", str(out), *TINY)
    result = json.loads((out / "segments.json").read_text())
    assert set(result["curves"]) == {"sasrec", "t2arec", "t2arec (no TTA)"}
    assert [s["segment"] for s in result["segments"]] == [1, 2, 3, 4]
    assert (out / "segments.png").read_bytes().startswith(PNG_MAGIC)
    (fig,) = figures
    assert_labelled(fig)
    assert len(fig.axes[0].get_legend().get_texts()) == 3


def test_throughput_reports_t2arec_with_and_without_alignment(out, figures):
    invoke("throughput", "--models", "sasrec,t2arec", "--batch-size", "64", "--iterations", "1",
           "--out", str(out), "--quiet", "data.synthetic_users=80", "data.synthetic_items=50", "data.max_len=20")
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert set(rows) == {"sasrec", "t2arec", "t2arec (no TTA)"}
    assert all(row["it_s"] > 0 for row in rows.values())
    assert (out / "throughput.png").read_bytes().startswith(PNG_MAGIC)
    assert_labelled(figures[0])


def test_a_bad_model_name_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--models", "sasrec,nosuch", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 2
    assert "unknown model 'nosuch'" in result.output


def test_seeds_are_a_count_or_a_list():
    from t2arec.cli import parse_seeds

    assert parse_seeds("3") == [2026, 2027, 2028]
    assert parse_seeds("2026,1,2") == [2026, 1, 2]
    assert parse_seeds("7,") == [7]
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds("0")
