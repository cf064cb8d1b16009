"""pipeline: what a resumed training must share with the interrupted one."""
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic
from t2arec.pipeline import training_fingerprint
from t2arec.train import _without_patience


def fingerprint(*overrides):
    cfg = RunConfig()
    apply_overrides(cfg, list(overrides))
    return training_fingerprint(cfg, prepare(make_synthetic(num_users=30, num_items=40, seed=1), name="tiny"))


def test_a_state_may_resume_under_another_patience():
    # the patience only decides where a run stops; train checks the state's validations against it
    assert _without_patience(fingerprint("train.patience_fraction=0.5")) == _without_patience(
        fingerprint("train.patience_fraction=0.33", "train.patience_steps=3000"))


def test_a_state_written_before_patience_fraction_existed_still_resumes():
    older = fingerprint()
    del older["config"]["train"]["patience_fraction"]
    assert _without_patience(older) == _without_patience(fingerprint("train.patience_fraction=0.33"))


def test_whatever_shapes_training_is_part_of_the_run():
    for override in ("train.lr=0.002", "train.batch_size=64", "seed=7", "model.hidden_size=32"):
        assert _without_patience(fingerprint(override)) != _without_patience(fingerprint()), override
