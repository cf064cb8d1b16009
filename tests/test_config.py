import pytest

from t2arec.config import ConfigError, RunConfig, apply_overrides, load_config_file, validate


def test_overrides_are_typed():
    cfg = RunConfig()
    apply_overrides(cfg, ["model.dropout=0.3", "train.epochs=7", "align.enabled=false",
                          "align.lr_grid=0.1,1", "data.columns=user=u,item=i", "data.path=none", "seed=9"])
    assert cfg.model.dropout == 0.3 and cfg.train.epochs == 7 and cfg.align.enabled is False
    assert cfg.align.lr_grid == (0.1, 1.0) and cfg.data.columns == {"user": "u", "item": "i"}
    assert cfg.data.path is None and cfg.seed == 9


@pytest.mark.parametrize("override,message", [
    ("model.hiden_size=3", "unknown config key 'model.hiden_size'"),
    ("modl.dropout=0.1", "unknown config section 'modl'"),
    ("train.epochs=many", "train.epochs: expected int"),
    ("align.enabled=maybe", "expected true or false"),
    ("model_name=nope", "unknown model 'nope'"),
    ("dropout", "not of the form"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_validate_reruns_field_checks():
    cfg = RunConfig()
    apply_overrides(cfg, ["model.time_transform=sqrt"])
    with pytest.raises(ConfigError, match="time_transform"):
        validate(cfg)


def test_toml_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 4\n[model]\ndropout = 0.1\ntime_scale = 1\n[align]\nlr_grid = [0.5, 2]\n')
    cfg = RunConfig()
    load_config_file(cfg, path)
    assert cfg.seed == 4 and cfg.model.dropout == 0.1 and cfg.model.time_scale == 1.0
    assert cfg.align.lr_grid == (0.5, 2.0)
    path.write_text("[model]\nnot_a_key = 1\n")
    with pytest.raises(ConfigError, match="not_a_key"):
        load_config_file(RunConfig(), path)


def test_a_model_brings_its_training_defaults_and_overrides_still_win():
    cfg = RunConfig()
    apply_overrides(cfg, ["model_name=sasrec"])
    assert cfg.train.stride_fraction == 0.2  # chosen on validation (docs/models.md)
    assert cfg.train.window_stride(50) == 10 and cfg.train.window_stride(200) == 40
    apply_overrides(cfg, ["train.stride_fraction=1"])
    assert cfg.train.window_stride(50) == 50
    apply_overrides(cfg, ["train.stride=7"])
    assert cfg.train.window_stride(50) == 7  # an explicit stride wins over the fraction
    cfg = RunConfig()
    apply_overrides(cfg, ["model_name=sasrec", "model_name=gru4rec"])
    assert cfg.train.stride_fraction == RunConfig().train.stride_fraction  # back to the plain default


@pytest.mark.parametrize("override,message", [
    ("train.stride_fraction=0", "stride_fraction"),
    ("train.eval_steps=0", "eval_steps"),
    ("train.window_repeats=0", "window_repeats"),
    ("train.patience_fraction=-0.1", "patience_fraction"),
    ("train.patience_fraction=nan", "patience_fraction"),
])
def test_bad_training_regime_values_are_refused(override, message):
    cfg = RunConfig()
    apply_overrides(cfg, [override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_patience_is_counted_in_steps_and_the_old_epoch_key_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'train.patience'"):
        apply_overrides(RunConfig(), ["train.patience=10"])


@pytest.mark.parametrize("model, fraction", [("sasrec", 0.2), ("tim4rec", 0.2), ("ttt4rec", 0.2), ("t2arec", 1.0),
                                             ("gru4rec", 1.0), ("caser", 1.0), ("bert4rec", 1.0), ("mamba4rec", 1.0)])
def test_each_model_trains_on_the_stride_chosen_for_it_on_validation(model, fraction):
    cfg = RunConfig()
    apply_overrides(cfg, [f"model_name={model}"])
    assert cfg.train.stride_fraction == fraction  # docs/models.md, "Training regime"
