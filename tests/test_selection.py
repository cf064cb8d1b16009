"""Choosing the test-time step on validation: "no step" is always a candidate, a grid step is chosen
only when its paired gain over no step is significant, and the test split never takes part."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from t2arec.align import AlignConfig
from t2arec.checkpoint import load_checkpoint
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.batching import Examples
from t2arec.evaluate import ndcg_per_user, select_alignment_lr, sign_test
from t2arec.models.base import SeqBatch, SequentialRecommender

NUM_ITEMS = 30
FAVOURITE = NUM_ITEMS  # the item the alignment step promotes


class Promoter(SequentialRecommender):
    """A model whose alignment step can only raise one item's score, by exactly the step size.

    Scores: a fixed ranking 1 > 2 > ... > N (from 1 down to -1) plus ``w`` for ``FAVOURITE``, whose
    own base score is ``favourite_base[0]`` for users whose last input item is 1 and
    ``favourite_base[1]`` for those whose last input item is 2. The alignment loss is
    ``-scale * mu_state * w`` (no labels), so one SGD step of size lr with mu_state = 1 adds
    lr * scale to ``w``; ``scale = 0`` is a step that changes nothing.
    """

    has_alignment_loss = True

    def __init__(self, scale: float = 1.0, favourite_base: tuple[float, float] = (-1.0, -1.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.scale = scale
        self.favourite_base = favourite_base

    def score(self, batch: SeqBatch) -> torch.Tensor:
        scores = torch.linspace(1.0, -1.0, NUM_ITEMS).repeat(len(batch.items), 1)
        second = batch.items[:, -1] == 2
        scores[:, FAVOURITE - 1] = torch.where(second, self.favourite_base[1], self.favourite_base[0])
        return scores + self.w * nn.functional.one_hot(torch.tensor(FAVOURITE - 1), NUM_ITEMS)

    def alignment_loss(self, batch: SeqBatch, mu_time: float, mu_state: float) -> torch.Tensor:
        return -self.scale * mu_state * self.w.sum()


def examples(targets, last_items=None) -> Examples:
    """One example per target; the inputs end with ``last_items`` (default 1)."""
    n = len(targets)
    items = np.ones((n, 3), dtype=np.int64)
    if last_items is not None:
        items[:, -1] = last_items
    return Examples(items, np.zeros((n, 3), dtype=np.float32), np.zeros(n, dtype=np.float32),
                    np.asarray(targets, dtype=np.int64), np.arange(n), np.arange(n, dtype=np.float64))


ALIGN = AlignConfig(mu_time=0.0, mu_state=1.0, lr_grid=(0.001, 0.5, 3.0, 5.0))


def test_a_significant_gain_chooses_the_smallest_of_the_tied_best_steps():
    # 20 users who all want the favourite: steps 3 and 5 put it first for everyone (NDCG 1 each)
    choice = select_alignment_lr(Promoter(), examples([FAVOURITE] * 20), ALIGN)
    assert choice.chosen and choice.lr == 3.0 == choice.candidate
    assert [row["lr"] for row in choice.rows] == [None, 0.001, 0.5, 3.0, 5.0]  # no step is a candidate
    assert choice.rows[0]["ndcg@10"] == 0.0 and choice.rows[3]["ndcg@10"] == choice.rows[4]["ndcg@10"] == 1.0
    assert (choice.users_helped, choice.users_hurt) == (20, 0)
    assert choice.p_value == pytest.approx(0.5**20) and choice.p_adjusted == pytest.approx(4 * 0.5**20)
    config = choice.config(ALIGN)
    assert config.enabled and config.lr == 3.0
    record = choice.to_dict()
    assert record["lr"] == 3.0 and record["tested_on"] == "validation" and "sign test" in record["test"]
    assert "chosen" in record["reason"]


def test_a_step_that_changes_nothing_is_not_chosen():
    choice = select_alignment_lr(Promoter(scale=0.0), examples([FAVOURITE] * 20), ALIGN)
    assert not choice.chosen and choice.lr is None
    assert choice.p_value == 1.0 and (choice.users_helped, choice.users_hurt) == (0, 0)
    assert choice.candidate == 0.001  # every step ties with no step: the smallest is the best grid step
    config = choice.config(ALIGN)
    assert not config.enabled and config.lr == 0.001  # off; --align would force the candidate
    assert "no step" in choice.to_dict()["reason"]


def test_a_step_that_hurts_on_average_is_not_chosen_even_if_it_helps_significantly_more_users():
    # a step of 0.06: 25 users see their target (the favourite) move from rank 9 to rank 8, a gain of
    # 1/log2(10) - 1/log2(11) = 0.012 each; 2 users see the favourite pass their target at rank 0,
    # a loss of 1 - 1/log2(3) = 0.37 each. The sign test is significant, the mean gain negative.
    targets = [FAVOURITE] * 25 + [1] * 2
    valid = examples(targets, last_items=[1] * 25 + [2] * 2)
    model = Promoter(favourite_base=(0.40, 0.95))
    choice = select_alignment_lr(model, valid, dataclasses.replace(ALIGN, lr_grid=(0.06,)))
    assert (choice.users_helped, choice.users_hurt) == (25, 2)
    assert choice.p_adjusted < 0.05 and choice.valid_gain < 0
    assert not choice.chosen and "on average" in choice.reason


def test_the_grid_size_corrects_for_picking_the_best_step():
    # 5 users helped, none hurt: one-sided p = 1/32 = 0.031 < 0.05 for a single step...
    valid = examples([FAVOURITE] * 5)
    single = select_alignment_lr(Promoter(), valid, dataclasses.replace(ALIGN, lr_grid=(3.0,)))
    assert single.chosen and single.p_value == pytest.approx(1 / 32)
    # ...but the best of two steps must reach 0.05 / 2: it does not
    double = select_alignment_lr(Promoter(), valid, dataclasses.replace(ALIGN, lr_grid=(3.0, 5.0)))
    assert not double.chosen and double.p_adjusted == pytest.approx(2 / 32)
    # the threshold is a setting
    loose = select_alignment_lr(Promoter(), valid, dataclasses.replace(ALIGN, lr_grid=(3.0, 5.0), significance=0.1))
    assert loose.chosen and loose.lr == 3.0


def test_nothing_to_choose_from():
    valid = examples([FAVOURITE] * 5)
    fixed = select_alignment_lr(Promoter(), valid, dataclasses.replace(ALIGN, lr_grid=(), lr=0.7))
    assert fixed.lr == 0.7 and not fixed.tested and fixed.rows == [] and fixed.config(ALIGN) == ALIGN
    off = select_alignment_lr(Promoter(), valid, dataclasses.replace(ALIGN, enabled=False))
    assert off.lr is None and not off.tested


def test_sign_test_and_per_user_ndcg_by_hand():
    assert ndcg_per_user(np.array([0, 1, 9, 10])).tolist() == [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0]
    # 7 helped, 1 hurt, 2 unchanged: P(X >= 7 | X ~ Bin(8, 1/2)) = (8 + 1) / 256
    p, helped, hurt = sign_test(np.array([0.1] * 7 + [-0.3] + [0.0] * 2))
    assert (helped, hurt) == (7, 1) and p == pytest.approx(9 / 256)
    assert sign_test(np.zeros(4)) == (1.0, 0, 0)


def test_significance_must_be_a_probability():
    with pytest.raises(ValueError, match="significance"):
        AlignConfig(significance=0.0)


# --- the pipeline: the choice sees validation only, and the checkpoint follows it -------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from t2arec.pipeline import run

    torch.set_num_threads(1)
    cfg = RunConfig()
    apply_overrides(cfg, ["data.synthetic_users=100", "data.synthetic_items=40", "data.max_len=12",
                          "train.epochs=1", "align.lr_grid=0.5,5"])
    out = tmp_path_factory.mktemp("tiny-selection-run")
    results = run(cfg, out, progress=False)
    return out, results


def test_the_test_split_never_takes_part_in_the_choice(tiny_run, monkeypatch):
    import t2arec.pipeline as pipeline
    from t2arec.pipeline import evaluate_variant

    run_dir, results = tiny_run
    align = AlignConfig(**{**results["config"]["align"], "lr_grid": (0.5, 5.0)})
    reference = evaluate_variant(run_dir, align)

    seen, made = [], {}
    original_select, original_examples = pipeline.select_alignment_lr, pipeline.evaluation_examples

    def spy_select(model, valid, align, device="cpu"):
        seen.append(valid)
        return original_select(model, valid, align, device)

    def scrambled_test(data, split, max_len):
        examples = original_examples(data, split, max_len)
        if split == "test":  # other targets, and the examples in reverse order
            rng = np.random.default_rng(0)
            examples = dataclasses.replace(examples, targets=rng.integers(1, data.num_items + 1, len(examples)))
            examples = Examples(*(a[::-1].copy() for a in dataclasses.astuple(examples)))
        made[split] = examples
        return examples

    monkeypatch.setattr(pipeline, "select_alignment_lr", spy_select)
    monkeypatch.setattr(pipeline, "evaluation_examples", scrambled_test)
    scrambled = evaluate_variant(run_dir, align)
    assert scrambled["test_no_tta"] != reference["test_no_tta"]  # the test split did change
    assert scrambled["alignment"]["chosen"] == reference["alignment"]["chosen"]
    assert scrambled["alignment_selection"] == reference["alignment_selection"]
    assert scrambled["valid"] == reference["valid"]
    assert len(seen) == 1 and seen[0] is made["valid"]  # the choice was given the validation split only


def test_the_checkpoint_and_results_record_the_choice(tiny_run):
    run_dir, results = tiny_run
    alignment, chosen = results["alignment"], results["alignment"]["chosen"]
    assert [row["lr"] for row in results["alignment_selection"]] == [None, 0.5, 5.0]
    assert chosen["tested_on"] == "validation" and chosen["grid_size"] == 2
    assert chosen["p_adjusted"] == pytest.approx(min(1.0, 2 * chosen["p_value"]))
    stored = load_checkpoint(run_dir / "checkpoint")["config"]["align"]
    assert alignment["applied"] == (chosen["lr"] is not None) == stored["enabled"]
    assert results["config"]["align"]["enabled"]  # as asked for
    assert stored["lr"] == results["config"]["align"]["lr"] == chosen["best_grid_lr"]
    if not alignment["applied"]:
        assert results["test"] == results["test_no_tta"] and alignment["lr"] is None
        assert results["valid"] == results["valid_no_tta"]


def test_refresh_rewrites_the_checkpoints_choice(tiny_run, tmp_path):
    """An old checkpoint that aligns with a step that is not significant is switched off by refresh."""
    from t2arec.pipeline import refresh_evaluation, store_align_in_checkpoint

    source, results = tiny_run
    if results["alignment"]["applied"]:
        pytest.skip("this run's step was significant")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    stale = {**load_checkpoint(run_dir / "checkpoint")["config"]["align"], "enabled": True, "lr": 5.0}
    store_align_in_checkpoint(run_dir / "checkpoint", stale)
    refreshed = refresh_evaluation(run_dir)
    assert not refreshed["alignment"]["applied"] and refreshed["test"] == refreshed["test_no_tta"]
    stored = load_checkpoint(run_dir / "checkpoint")["config"]["align"]
    assert not stored["enabled"] and stored["lr"] == refreshed["alignment"]["chosen"]["best_grid_lr"]
    assert json.loads((run_dir / "results.json").read_text())["alignment"] == refreshed["alignment"]


def test_paired_test_over_users_counts_directions_and_is_two_sided():
    from t2arec.evaluate import paired_test_over_users

    plain = np.array([0, 0, 5, 20, 3, 3])  # 0-based ranks; 20 is outside the top 10
    aligned = np.array([0, 1, 2, 20, 3, 30])
    result = paired_test_over_users(aligned, plain)
    assert (result["users_helped"], result["users_hurt"]) == (1, 2)
    expected_gain = (1 / np.log2(3) - 1) + (1 / np.log2(4) - 1 / np.log2(7)) - 1 / np.log2(5)
    assert np.isclose(result["ndcg_gain"], expected_gain / 6)
    assert np.isclose(result["p_value"], 1.0)  # 1 of 3 changed users helped: no direction stands out
    many = paired_test_over_users(np.zeros(30, dtype=int), np.full(30, 50))
    assert many["users_helped"] == 30 and many["p_value"] < 1e-8
    swapped = paired_test_over_users(np.full(30, 50), np.zeros(30, dtype=int))
    assert np.isclose(swapped["p_value"], many["p_value"])  # two-sided: the same evidence either way
