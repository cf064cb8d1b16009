import json

import pytest

from t2arec.experiments import store
from t2arec.experiments.store import ExperimentError, Setup, Variant, ensure_run, run_dir

TINY = ["data.synthetic_users=60", "data.synthetic_items=40", "train.epochs=1"]


def fake_run(calls):
    def run(cfg, directory, progress=True):
        calls.append(cfg.seed)
        results = {"config": json.loads(json.dumps(cfg.to_dict(), default=str)), "test": {"ndcg@10": 0.1}}
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "results.json").write_text(json.dumps(results))
        return results
    return run


def test_a_finished_run_is_reused_and_never_retrained(tmp_path, monkeypatch):
    setup, calls = _one_stored_run(tmp_path, monkeypatch, "sasrec")
    ensure_run(setup, Variant("sasrec"), 7)
    assert calls == [7]
    assert (run_dir(setup, Variant("sasrec"), 7) / "results.json").exists()


def test_a_folder_holding_another_configuration_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "run", fake_run([]))
    ensure_run(Setup(out=tmp_path, overrides=TINY, progress=False), Variant("sasrec"), 7)
    other = Setup(out=tmp_path, overrides=[*TINY, "train.lr=0.01"], progress=False)
    with pytest.raises(ExperimentError, match="train.lr"):
        ensure_run(other, Variant("sasrec"), 7)


def _one_stored_run(tmp_path, monkeypatch, model):
    """A finished (fake) run of ``model``, seed 7, and the list of seeds trained so far."""
    calls = []
    monkeypatch.setattr(store, "run", fake_run(calls))
    setup = Setup(out=tmp_path, overrides=TINY, progress=False)
    ensure_run(setup, Variant(model), 7)
    return setup, calls


def _drop_stored_field(setup, variant, seed, section, key):
    """Edit a stored results.json as if its run predated the option ``section.key``."""
    path = run_dir(setup, variant, seed) / "results.json"
    results = json.loads(path.read_text())
    del results["config"][section][key]
    path.write_text(json.dumps(results))


def test_a_run_older_than_an_option_is_reused_at_its_default_and_only_there(tmp_path, monkeypatch):
    setup, calls = _one_stored_run(tmp_path, monkeypatch, "t2arec")
    _drop_stored_field(setup, Variant("t2arec"), 7, "model", "num_heads")
    ensure_run(setup, Variant("t2arec"), 7)  # num_heads at its default: the same run
    assert calls == [7]
    with_heads = Setup(out=tmp_path, overrides=[*TINY, "model.num_heads=2"], progress=False)
    with pytest.raises(ExperimentError, match="model.num_heads"):
        ensure_run(with_heads, Variant("t2arec"), 7)


def test_variants_name_their_folders_by_model_and_overrides():
    variant = Variant("t2arec", ("train.mu_time=0", "train.mu_state=0"))
    assert variant.label == "t2arec+train.mu_time=0+train.mu_state=0"
    assert "/" not in Variant("t2arec", ("data.path=a/b",)).folder


def test_setup_rejects_repeated_or_missing_seeds(tmp_path):
    with pytest.raises(ExperimentError):
        Setup(out=tmp_path, seeds=[1, 1])
    with pytest.raises(ExperimentError):
        Setup(out=tmp_path, seeds=[])


def test_model_scoped_overrides_reach_that_model_only_and_name_its_folder(tmp_path):
    from t2arec.experiments.store import build_config

    setup = Setup(out=tmp_path, overrides=[*TINY, "sasrec:train.stride=5", "sasrec:model.hidden_dropout=0.2"])
    sasrec, t2arec = build_config(setup, Variant("sasrec"), 1), build_config(setup, Variant("t2arec"), 1)
    assert (sasrec.train.stride, sasrec.model.hidden_dropout) == (5, 0.2)
    assert t2arec.train.stride == 0
    assert run_dir(setup, Variant("sasrec"), 1).parent.name == "sasrec+train.stride=5+model.hidden_dropout=0.2"
    assert run_dir(setup, Variant("t2arec"), 1).parent.name == "t2arec"


def _store_run_made_before_validations_inside_epochs(setup, variant, seed, first_epoch_steps):
    """Rewrite a stored run as if made before ``train.validate_within_epochs`` existed (its default
    was then the behaviour of ``false``), with epochs of ``first_epoch_steps`` steps."""
    _drop_stored_field(setup, variant, seed, "train", "validate_within_epochs")
    path = run_dir(setup, variant, seed) / "results.json"
    results = json.loads(path.read_text())
    results["history"] = [{"epoch": 1, "step": first_epoch_steps}, {"epoch": 2, "step": 2 * first_epoch_steps}]
    path.write_text(json.dumps(results))


def test_a_run_older_than_validations_inside_epochs_validated_at_epoch_ends(tmp_path, monkeypatch):
    """Its long epochs validated once each: it is the run of ``false``, not of today's default."""
    setup, calls = _one_stored_run(tmp_path, monkeypatch, "sasrec")
    _store_run_made_before_validations_inside_epochs(setup, Variant("sasrec"), 7, first_epoch_steps=855)
    with pytest.raises(ExperimentError, match="train.validate_within_epochs"):
        ensure_run(setup, Variant("sasrec"), 7)  # the default is now on
    as_made = Setup(out=tmp_path, overrides=[*TINY, "train.validate_within_epochs=false"], progress=False)
    ensure_run(as_made, Variant("sasrec"), 7)
    assert calls == [7]


def test_a_run_older_than_the_option_with_short_epochs_matches_either_value(tmp_path, monkeypatch):
    """No epoch longer than eval_steps: the option changes nothing, so the run is not trained again."""
    setup, calls = _one_stored_run(tmp_path, monkeypatch, "t2arec")
    _store_run_made_before_validations_inside_epochs(setup, Variant("t2arec"), 7, first_epoch_steps=200)
    ensure_run(setup, Variant("t2arec"), 7)
    ensure_run(Setup(out=tmp_path, overrides=[*TINY, "train.validate_within_epochs=false"], progress=False),
               Variant("t2arec"), 7)
    assert calls == [7]
    with pytest.raises(ExperimentError, match="train.lr"):  # other options are still compared
        ensure_run(Setup(out=tmp_path, overrides=[*TINY, "train.lr=0.01"], progress=False), Variant("t2arec"), 7)


def _store_run_made_before_patience_fractions(setup, variant, seed, best_step, patience_steps):
    """Rewrite a stored run as if made before ``train.patience_fraction`` existed."""
    _drop_stored_field(setup, variant, seed, "train", "patience_fraction")
    path = run_dir(setup, variant, seed) / "results.json"
    results = json.loads(path.read_text())
    results["best_step"], results["config"]["train"]["patience_steps"] = best_step, patience_steps
    path.write_text(json.dumps(results))


def test_a_run_older_than_patience_fractions_matches_those_that_would_have_stopped_it_alike(tmp_path, monkeypatch):
    setup, calls = _one_stored_run(tmp_path, monkeypatch, "t2arec")
    _store_run_made_before_patience_fractions(setup, Variant("t2arec"), 7, best_step=6000, patience_steps=2000)
    common = [*TINY, "train.patience_steps=2000"]
    for fraction in ("0", "0.3", "0.33"):  # 0.33 * 6,000 = 1,980 <= 2,000: the same stop
        ensure_run(Setup(out=tmp_path, overrides=[*common, f"train.patience_fraction={fraction}"], progress=False),
                   Variant("t2arec"), 7)
    assert calls == [7]
    with pytest.raises(ExperimentError, match="train.patience_fraction"):  # it would have waited 2,100 steps
        ensure_run(Setup(out=tmp_path, overrides=[*common, "train.patience_fraction=0.35"], progress=False),
                   Variant("t2arec"), 7)
