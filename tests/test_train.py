"""The training loop: work counted in steps, early stopping, window repeats, exact resumption."""
import numpy as np
import pytest
import torch

import t2arec.train as train_module
from t2arec.align import AlignConfig
from t2arec.config import RunConfig, TrainConfig, apply_overrides
from t2arec.data.batching import evaluation_examples, training_windows
from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic
from t2arec.models import build_model
from t2arec.train import steps_per_epoch, train


@pytest.fixture(scope="module")
def data():
    return prepare(make_synthetic(num_users=60, num_items=40, seed=3), name="tiny")


def setup_model(data, name="gru4rec", **train_overrides):
    cfg = RunConfig()
    apply_overrides(cfg, [f"model_name={name}", "data.max_len=10",
                          *(f"train.{k}={v}" for k, v in train_overrides.items())])
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items)
    windows = training_windows(data, 10, cfg.train.window_stride(10))
    return model, windows, evaluation_examples(data, "valid", 10), cfg


def fake_scores(monkeypatch, scores):
    """Validation NDCG@10 values returned in turn, instead of evaluating."""
    values = iter(scores)

    class Result:
        def __init__(self):
            self.metrics = {"ndcg@10": next(values)}

    monkeypatch.setattr(train_module, "evaluate", lambda *args, **kwargs: Result())


def interrupt_epoch(monkeypatch, nth):
    """Make the nth call of run_epoch raise KeyboardInterrupt, as a crash mid-run would."""
    real_epoch, calls = train_module.run_epoch, []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", crash)


def test_validation_follows_steps_not_epochs(data, monkeypatch):
    model, windows, valid, cfg = setup_model(data, epochs=12, batch_size=64, eval_steps=7, patience_steps=1000)
    per_epoch = steps_per_epoch(windows, cfg.train)
    assert 1 < per_epoch < 7  # validations several epochs apart, not on a fixed epoch grid
    fake_scores(monkeypatch, [0.1 * i for i in range(1, 100)])
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    validated = [row["step"] for row in result.history if "valid_ndcg@10" in row]
    steps = [row["step"] for row in result.history]
    assert steps == [per_epoch * e for e in range(1, 13)]
    # after the epoch in which the count passes each multiple of 7, and after the last epoch
    expected = [s for prev, s in zip([0, *steps], steps) if s // 7 > prev // 7]
    expected += [] if steps[-1] in expected else [steps[-1]]
    assert validated == expected
    assert result.best_step == steps[-1] and result.steps == steps[-1]


def validation_steps(history):
    """Every step at which a run validated, from its history."""
    steps = []
    for row in history:
        steps += [v["step"] for v in row["validations"]] if "validations" in row else (
            [row["step"]] if "valid_ndcg@10" in row else [])
    return steps


def test_long_epochs_validate_inside_unless_told_not_to(data, monkeypatch):
    settings = dict(epochs=3, batch_size=8, eval_steps=5, patience_steps=1000)
    model, windows, valid, cfg = setup_model(data, validate_within_epochs=False, **settings)
    per_epoch = steps_per_epoch(windows, cfg.train)
    assert per_epoch == 34  # epochs longer than eval_steps, and not a multiple of it
    fake_scores(monkeypatch, [0.01 * i for i in range(1, 100)])
    once = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert validation_steps(once.history) == [34, 68, 102]  # switched off: once per long epoch
    assert all("validations" not in row for row in once.history)

    model, windows, valid, cfg = setup_model(data, **settings)  # the default
    fake_scores(monkeypatch, [0.01 * i for i in range(1, 100)])
    inside = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    # every multiple of 5, inside the epochs, and the end of the last epoch
    assert validation_steps(inside.history) == [*range(5, 102, 5), 102]
    assert [row["step"] for row in inside.history] == [34, 68, 102]
    first = inside.history[0]
    assert first["valid_ndcg@10"] == first["validations"][-1]["ndcg@10"]  # the epoch's last validation
    assert inside.best_step == 102


def test_validations_inside_epochs_leave_the_training_unchanged(data):
    """Validation draws no random numbers: with it inside the epochs, the run trains exactly as without."""
    runs = []
    for within in (False, True):
        model, windows, valid, cfg = setup_model(data, "t2arec", epochs=2, batch_size=8, eval_steps=5,
                                                 patience_steps=1000, validate_within_epochs=within)
        runs.append(train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False).history)
    without, inside = runs
    assert len(validation_steps(inside)) == 14 > len(validation_steps(without)) == 2
    for key in ("loss_total", "loss_rec"):  # each epoch's losses, dropout draws and all
        assert [row[key] for row in inside] == [row[key] for row in without], key
    assert inside[-1]["valid_ndcg@10"] == without[-1]["valid_ndcg@10"]  # both validate at the last step


def test_patience_can_stop_inside_an_epoch(data, monkeypatch):
    model, windows, valid, cfg = setup_model(data, epochs=3, batch_size=8, eval_steps=5, patience_steps=10,
                                             validate_within_epochs=True)
    fake_scores(monkeypatch, [0.5, 0.6, 0.4, 0.3] + [0.1] * 100)  # best at step 10, patience out at 20
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert result.best_step == 10 and result.steps == 20
    assert len(result.history) == 1 and result.history[0]["step"] == 20
    assert validation_steps(result.history) == [5, 10, 15, 20]


@pytest.mark.parametrize("fraction, stop", [(0.0, 30), (0.5, 30), (1.0, 40)])
def test_patience_also_waits_a_fraction_of_the_best_step(data, monkeypatch, fraction, stop):
    # best at step 20: patience max(10, fraction * 20) runs out at step 30 or 40
    model, windows, valid, cfg = setup_model(data, epochs=100, batch_size=8, eval_steps=5, patience_steps=10,
                                             patience_fraction=fraction, validate_within_epochs=True)
    fake_scores(monkeypatch, [0.1, 0.2, 0.3, 0.4] + [0.1] * 100)
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert result.best_step == 20 and result.steps == stop


def test_training_goes_on_in_train_mode_after_a_validation_inside_the_epoch(data):
    model, windows, valid, cfg = setup_model(data, "t2arec", epochs=1, batch_size=8, eval_steps=5,
                                             validate_within_epochs=True)
    modes = []
    losses = model.training_losses

    def recording(batch):
        modes.append(model.training)
        return losses(batch)

    model.training_losses = recording
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert len(validation_steps(result.history)) == 7  # the real evaluation ran, in eval mode
    assert len(modes) == 34 and all(modes)


def test_patience_counts_steps_since_the_best_validation(data, monkeypatch):
    # validations at epoch ends only, so patience runs out at the first epoch end past it
    # (inside epochs it stops on the step: test_patience_can_stop_inside_an_epoch)
    model, windows, valid, cfg = setup_model(data, epochs=100, batch_size=64, eval_steps=1, patience_steps=7,
                                             validate_within_epochs=False)
    per_epoch = steps_per_epoch(windows, cfg.train)
    fake_scores(monkeypatch, [0.5, 0.6, 0.4] + [0.1] * 100)  # best at the 2nd validation, then worse
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert result.best_step == 2 * per_epoch
    assert result.steps - result.best_step >= 7 > result.steps - per_epoch - result.best_step
    assert result.best_valid == {"ndcg@10": 0.6}


def test_learning_rate_decays_after_each_plateau_and_only_when_asked(data, monkeypatch):
    # one step per epoch and a validation after each: the best at step 2, then nothing better
    model, windows, valid, cfg = setup_model(data, epochs=9, batch_size=10_000, eval_steps=1,
                                             patience_steps=100, lr_decay=0.5, lr_plateau_steps=3)
    assert steps_per_epoch(windows, cfg.train) == 1
    fake_scores(monkeypatch, [0.5, 0.6] + [0.1] * 7)
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    # 3 steps after the best (step 5) and 3 after that decay (step 8): lr 1e-3 -> 5e-4 -> 2.5e-4
    assert [row["lr"] for row in result.history] == pytest.approx(
        [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4])

    model, windows, valid, cfg = setup_model(data, epochs=9, batch_size=10_000, eval_steps=1, patience_steps=100)
    fake_scores(monkeypatch, [0.5, 0.6] + [0.1] * 7)
    result = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)
    assert {row["lr"] for row in result.history} == {1e-3}  # the default: constant


def test_a_resumed_run_keeps_its_decayed_learning_rate(data, tmp_path, monkeypatch):
    def fresh():
        return setup_model(data, epochs=9, batch_size=10_000, eval_steps=1, patience_steps=100,
                           lr_decay=0.5, lr_plateau_steps=3)

    scores = [0.5, 0.6] + [0.1] * 7
    model, windows, valid, cfg = fresh()
    fake_scores(monkeypatch, scores)
    straight = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False)

    state = tmp_path / "train_state.pt"
    model, windows, valid, cfg = fresh()
    fake_scores(monkeypatch, scores)
    with monkeypatch.context() as crashing:
        interrupt_epoch(crashing, 7)  # after the first decay (step 5), before the second (step 8)
        with pytest.raises(KeyboardInterrupt):
            train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False, state_path=state)
    model, windows, valid, cfg = fresh()
    fake_scores(monkeypatch, scores[6:])  # the validations the crashed run did not reach
    resumed = train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False, state_path=state)
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history]
    assert resumed.history[-1]["lr"] == pytest.approx(2.5e-4)


def test_a_decay_outside_zero_to_one_is_refused():
    from t2arec.config import ConfigError, validate
    cfg = RunConfig()
    apply_overrides(cfg, ["train.lr_decay=1.5"])
    with pytest.raises(ConfigError, match="train.lr_decay"):
        validate(cfg)


def test_window_repeats_show_every_window_that_many_times_per_epoch(data):
    model, windows, _, cfg = setup_model(data, window_repeats=3, batch_size=7)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_losses(self, batch):
            seen.extend(batch.items[:, -1].tolist())
            return {"total": self.w.sum()}

    recorder = Recorder()
    optimizer = torch.optim.Adam(recorder.parameters())
    train_module.run_epoch(recorder, windows, optimizer, cfg.train, np.random.default_rng(0), "cpu")
    assert sorted(seen) == sorted(windows.items[:, -1].tolist() * 3)
    assert steps_per_epoch(windows, cfg.train) == -(-3 * len(windows) // 7)


# dropout and Cloze masks both draw random numbers; validations inside epochs must not disturb them
@pytest.mark.parametrize(("name", "within"), [("t2arec", False), ("bert4rec", False), ("t2arec", True)])
def test_an_interrupted_run_resumes_exactly(data, tmp_path, monkeypatch, name, within):
    def fresh():
        return setup_model(data, name, epochs=5, batch_size=32, eval_steps=3, patience_steps=1000,
                           validate_within_epochs=within)

    model, windows, valid, cfg = fresh()
    straight = train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    state = tmp_path / "train_state.pt"
    model, windows, valid, cfg = fresh()
    with monkeypatch.context() as crashing:
        interrupt_epoch(crashing, 3)
        with pytest.raises(KeyboardInterrupt):
            train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False, state_path=state,
                  fingerprint={"run": 1})
    torch.manual_seed(123)  # the global generator is restored from the state, whatever it is now
    model, windows, valid, cfg = fresh()
    resumed = train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False, state_path=state,
                    fingerprint={"run": 1})
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_state_from_another_run_is_refused(data, tmp_path):
    model, windows, valid, cfg = setup_model(data, epochs=1)
    state = tmp_path / "train_state.pt"
    train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False, state_path=state,
          fingerprint={"lr": 1})
    model, windows, valid, cfg = setup_model(data, epochs=2)
    with pytest.raises(ValueError, match="another run"):
        train(model, windows, valid, cfg.train, AlignConfig(), seed=0, progress=False, state_path=state,
              fingerprint={"lr": 2})


def patience_runs(data, tmp_path, monkeypatch, interrupt_at, first, then):
    """A run under patience ``first`` (steps, fraction) interrupted before epoch ``interrupt_at`` (None:
    left to stop), resumed under ``then``; and a run trained under ``then`` from the start. Validation
    after every epoch; NDCG@10 best at epochs 4 and 8."""
    scores = [0.1, 0.2, 0.3, 0.4, 0.1, 0.1, 0.1, 0.5] + [0.1] * 100

    def fresh(patience):
        model, windows, valid, cfg = setup_model(data, epochs=100, batch_size=32, eval_steps=1,
                                                 validate_within_epochs=False)
        cfg.train.patience_steps = patience[0] * steps_per_epoch(windows, cfg.train)
        cfg.train.patience_fraction = patience[1]
        return model, windows, valid, cfg

    model, windows, valid, cfg = fresh(then)
    fake_scores(monkeypatch, scores)
    straight = train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    state = tmp_path / "train_state.pt"
    model, windows, valid, cfg = fresh(first)
    fake_scores(monkeypatch, scores)
    with monkeypatch.context() as crashing:
        if interrupt_at is not None:
            interrupt_epoch(crashing, interrupt_at)
        try:
            train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False, state_path=state,
                  fingerprint={"run": 1, "train": {"patience_fraction": first[1]}})
        except KeyboardInterrupt:
            pass
    done_epochs = torch.load(state, weights_only=True)["progress"]["epoch"]
    model, windows, valid, cfg = fresh(then)
    fake_scores(monkeypatch, scores[done_epochs:])

    def resume():
        return train(model, windows, valid, cfg.train, AlignConfig(), seed=4, progress=False, state_path=state,
                     fingerprint={"run": 1, "train": {"patience_fraction": then[1]}})

    return straight, expected, model, resume


def test_a_state_goes_on_under_a_longer_patience_as_a_run_trained_with_it(data, tmp_path, monkeypatch):
    # 2 epochs of patience stop at epoch 6; 2 epochs or the best's step (4, then 8) go on to epoch 16
    straight, expected, model, resume = patience_runs(data, tmp_path, monkeypatch, 5, (2, 0.0), (2, 1.0))
    resumed = resume()
    per_epoch = straight.history[0]["step"]
    assert (straight.best_step, straight.steps) == (8 * per_epoch, 16 * per_epoch)
    assert (resumed.best_step, resumed.steps) == (straight.best_step, straight.steps)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_state_trained_past_a_shorter_patience_is_refused(data, tmp_path, monkeypatch):
    # trained to epoch 8 under the longer patience, where the shorter one stops at epoch 6
    *_, resume = patience_runs(data, tmp_path, monkeypatch, 9, (2, 1.0), (2, 0.0))
    with pytest.raises(ValueError, match="past step"):
        resume()


def test_a_state_that_stopped_is_not_continued_under_a_longer_patience(data, tmp_path, monkeypatch):
    *_, resume = patience_runs(data, tmp_path, monkeypatch, None, (2, 0.0), (2, 1.0))
    with pytest.raises(ValueError, match="stopped at step"):
        resume()


def test_a_stopped_state_under_its_own_patience_ends_at_once(data, tmp_path, monkeypatch):
    straight, _, _, resume = patience_runs(data, tmp_path, monkeypatch, None, (2, 0.0), (2, 0.0))
    resumed = resume()
    assert (resumed.best_step, resumed.steps, len(resumed.history)) == (straight.best_step, straight.steps, 6)


def test_train_config_defaults_count_work_in_steps():
    cfg = TrainConfig()
    assert cfg.eval_steps > 0 and cfg.patience_steps >= cfg.eval_steps and cfg.epochs >= 200
