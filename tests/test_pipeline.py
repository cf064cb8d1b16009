"""pipeline: what a resumed training must share with the interrupted one."""
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic
from t2arec.pipeline import training_fingerprint


def fingerprint(*overrides):
    cfg = RunConfig()
    apply_overrides(cfg, list(overrides))
    return training_fingerprint(cfg, prepare(make_synthetic(num_users=30, num_items=40, seed=1), name="tiny"))


def test_a_key_added_later_at_its_older_behaviour_leaves_older_states_resumable():
    # a state written before train.patience_fraction existed has no such key and waited a fixed
    # patience, which is fraction 0: a run asked for with fraction 0 must match it
    assert "patience_fraction" not in fingerprint("train.patience_fraction=0")["config"]["train"]


def test_a_key_added_later_away_from_its_older_behaviour_is_part_of_the_run():
    assert fingerprint("train.patience_fraction=0.5")["config"]["train"]["patience_fraction"] == 0.5
    assert fingerprint("train.patience_fraction=0.5") != fingerprint("train.patience_fraction=0")
