"""The experiments when a run chose no test-time step on validation (results.json: alignment.applied
false, alignment.lr None): no step is kept or forced, and no "(no TTA)" row repeats the same numbers."""
import importlib

import pytest

from t2arec.align import AlignConfig
from t2arec.experiments import Setup
from t2arec.experiments.ablate import ablation_rows, row_metrics
from t2arec.experiments.compare import collect_rows
from t2arec.experiments.store import Variant

ablate_module = importlib.import_module("t2arec.experiments.ablate")
compare_module = importlib.import_module("t2arec.experiments.compare")
sweep_module = importlib.import_module("t2arec.experiments.sweep")

METRICS = {"recall@10": 0.2, "mrr@10": 0.05, "ndcg@10": 0.08}


def finished_run(applied: bool) -> dict:
    """The parts of a run's results.json the experiments read."""
    return {"test": METRICS, "test_no_tta": METRICS if not applied else {**METRICS, "ndcg@10": 0.07},
            "alignment": {"applied": applied, "lr": 2.0 if applied else None}}


@pytest.fixture
def captured(monkeypatch):
    """The align config every variant evaluation is asked for (nothing is trained or evaluated)."""
    asked = []

    def fake_variant(setup, variant, seed, name, align):
        asked.append((name, align))
        return {"test": METRICS}

    monkeypatch.setattr(ablate_module, "ensure_variant", fake_variant)
    monkeypatch.setattr(sweep_module, "ensure_variant", fake_variant)
    return asked


@pytest.mark.parametrize("applied", [True, False])
def test_ablation_keeps_the_full_models_step_only_when_it_chose_one(tmp_path, captured, applied):
    setup = Setup(out=tmp_path, seeds=[1], progress=False)
    rows = {row.name: row for row in ablation_rows()}
    row_metrics(setup, rows["w/o test-time L_time"], 1, finished_run(applied))
    (name, align), = captured
    assert name == "only-state" and align.mu_time == 0.0
    if applied:  # the same step as the full model, untested: only the loss differs
        assert align.lr_grid == () and align.lr == 2.0
    else:  # no step to keep: the row chooses a step, or none, on validation itself
        assert align.lr_grid == AlignConfig().lr_grid and align.enabled


@pytest.mark.parametrize("applied", [True, False])
def test_test_time_sweep_keeps_the_default_models_step_only_when_it_chose_one(tmp_path, captured, monkeypatch, applied):
    setup = Setup(out=tmp_path, seeds=[1], progress=False)
    monkeypatch.setattr(sweep_module, "ensure_runs",
                        lambda setup, variants, desc: {(Variant("t2arec"), 1): finished_run(applied)})
    sweep_module.test_sweep(setup, "t2arec", [0.0, 0.5])
    assert len(captured) == 4  # two weights x two values
    for _, align in captured:
        assert (align.lr_grid == ()) == applied
        if applied:
            assert align.lr == 2.0


@pytest.mark.parametrize("applied", [True, False])
def test_compare_adds_a_no_tta_row_only_when_a_step_ran(tmp_path, monkeypatch, applied):
    setup = Setup(out=tmp_path, seeds=[1], progress=False)
    monkeypatch.setattr(compare_module, "ensure_runs",
                        lambda setup, variants, desc: {(v, 1): finished_run(applied) for v in variants})
    rows = collect_rows(setup, ["t2arec"])
    assert set(rows) == ({"t2arec", "t2arec (no TTA)"} if applied else {"t2arec"})
