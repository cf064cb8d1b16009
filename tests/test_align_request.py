"""Per-request test-time alignment (align.scope = "request"): each request's step and scores depend on
that request alone, equal the batch-scope step on the request's rows, and come from one vectorised
step for all requests."""
import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from t2arec import align as align_module
from t2arec.align import AlignConfig, score_batch, score_batch_scoped, use_scores_scoped
from t2arec.config import ConfigError, RunConfig, apply_overrides, validate
from t2arec.models.base import ItemTable, SeqBatch
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from t2arec.models.t2arec_request import EMBEDDING, T2ARecRequests
from t2arec.scoring import CorrectedScores, top_k


@contextlib.contextmanager
def threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make(rows=9, length=20, items=300, hidden=16, dtype=torch.float32, seed=0, **model_cfg):
    torch.manual_seed(seed)
    cfg = T2ARecConfig(num_items=items, hidden_size=hidden, state_size=hidden // 2, chunk_size=4, **model_cfg)
    model = T2ARec(cfg).to(dtype).eval()
    with torch.no_grad():  # a trained-looking model: P and W_q away from their initial zeros/small values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seqs = torch.randint(1, items + 1, (rows, length))
    seqs[0, : length - 3] = 0  # short histories (left padding), one shorter than the conv kernel
    seqs[1, : length - 1] = 0
    seqs[2, 5] = seqs[2, 9]  # a repeated item inside a history
    gaps, next_gap = torch.rand(rows, length) * 5000, torch.rand(rows) * 5000
    batch = SeqBatch(seqs, gaps, next_gap, torch.randint(1, items + 1, (rows,)))
    return model, batch


def rows_of(batch, rows):
    return SeqBatch(batch.items[rows], batch.gaps[rows], batch.next_gap[rows], batch.targets[rows])


CFG = AlignConfig(lr=1.0, mu_time=1.0, mu_state=1.0, scope="request")


@pytest.mark.parametrize("optimizer,steps,lr", [("sgd", 1, 1.0), ("sgd", 2, 0.5), ("adam", 1, 1e-2), ("adam", 3, 1e-2)])
def test_one_request_equals_the_batch_scope_step(optimizer, steps, lr):
    model, batch = make()
    cfg = dataclasses.replace(CFG, optimizer=optimizer, steps=steps, lr=lr)
    expected, batch_stats = score_batch(model, batch, dataclasses.replace(cfg, scope="batch"))
    got, stats = score_batch_scoped(model, batch, cfg, requests=[5] * len(batch.items))
    plain, _ = score_batch(model, batch, None)
    assert (expected - plain).abs().max() > 1e-2  # the step matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
    assert stats.param_shift == pytest.approx(batch_stats.param_shift, rel=1e-4)
    assert stats.loss_before == pytest.approx(batch_stats.loss_before, rel=1e-5)


def test_one_request_equals_the_batch_scope_step_in_float64():
    model, batch = make(dtype=torch.float64)
    expected, _ = score_batch(model, batch, dataclasses.replace(CFG, scope="batch"))
    got, _ = score_batch_scoped(model, batch, CFG, requests=[0] * len(batch.items))
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("model_cfg", [{}, {"num_heads": 2}, {"output_gate": False, "state_p": "theorem"},
                                       {"time_transform": "identity", "time_scale": 50.0},
                                       {"single_layer_residual": True}, {"expand": 2, "num_heads": 2}])
def test_per_request_gradients_equal_autograd_on_each_request_alone(model_cfg):
    model, batch = make(dtype=torch.float64, **model_cfg)
    requests = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    state = T2ARecRequests(model, batch, requests, 5, 0.7, 0.3)
    for tensor in state.tensors:
        tensor.requires_grad_(True)
    losses = state.loss()
    grads = torch.autograd.grad(losses.sum(), state.tensors, allow_unused=True, materialize_grads=True)
    by_name = dict(zip(state.names + [EMBEDDING], grads))
    params = dict(model.named_parameters())
    for r in range(5):
        alone = rows_of(batch, (requests == r).nonzero()[:, 0])
        loss = model.alignment_loss(alone, 0.7, 0.3)
        want = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True)
        assert losses[r].item() == pytest.approx(loss.item(), rel=1e-12)
        for name, expected in zip(params, want):
            if name == EMBEDDING:  # the request's rows, scattered back into the table
                got = torch.zeros_like(expected).index_put_((state.items[r],), by_name[name][r], accumulate=True)
            else:
                got = by_name[name][r]
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"request {r}, {name}")


def alone_and_together(model, batch, groups, cfg=CFG, **kwargs):
    together, _ = score_batch_scoped(model, batch, cfg, requests=groups, **kwargs)
    alone = torch.empty_like(together)
    for label in set(groups):
        rows = [i for i, g in enumerate(groups) if g == label]
        alone[rows], _ = score_batch_scoped(model, rows_of(batch, rows), cfg, requests=[0] * len(rows))
    return alone, together


@pytest.mark.parametrize("thread_count", [1, 2])
@pytest.mark.parametrize("hidden,length", [(16, 20), (64, 50)])
def test_a_request_gets_the_same_scores_alone_and_among_others(thread_count, hidden, length):
    model, batch = make(hidden=hidden, length=length)
    with threads(thread_count):
        for groups in ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 1, 2, 2, 2, 3, 4, 4], [3, 1, 3, 0, 2, 1, 0, 0, 4]):
            alone, together = alone_and_together(model, batch, groups)
            assert torch.equal(alone, together), (groups, (alone - together).abs().max())
    plain, _ = score_batch(model, batch, None)
    assert (together - plain).abs().max() > 1e-3


def test_adam_and_several_steps_are_batch_invariant_too():
    model, batch = make()
    for cfg in (dataclasses.replace(CFG, optimizer="adam", lr=1e-2, steps=2),
                dataclasses.replace(CFG, steps=3, lr=0.3)):
        alone, together = alone_and_together(model, batch, list(range(9)), cfg)
        assert torch.equal(alone, together)


def test_groups_of_rows_do_not_change_anything():
    """Rows are computed in groups of whole requests (memory); the groups leave every number as it is."""
    model, batch = make()
    whole, stats = score_batch_scoped(model, batch, CFG)
    for tokens in (1, 40, 60, 100):  # 1 row per group, 2, 3, 5
        grouped, grouped_stats = align_module.use_scores_by_request(
            model, batch, CFG, lambda s: s.block(0, s.num_items), chunk_tokens=tokens)
        assert torch.equal(grouped, whole), tokens
        assert grouped_stats.param_shift == pytest.approx(stats.param_shift, rel=1e-6)


def test_one_vectorised_step_not_a_loop_over_requests(monkeypatch):
    model, batch = make()
    calls = {"grad": 0, "alignment_loss": 0, "states": 0}
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return grad(*args, **kwargs)

    def forbidden(*args, **kwargs):
        calls["alignment_loss"] += 1
        raise AssertionError("the per-request step must not run the batch-scope loss")

    original_init = T2ARecRequests.__init__

    def counting_init(self, *args, **kwargs):
        calls["states"] += 1
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    monkeypatch.setattr(model, "alignment_loss", forbidden)
    monkeypatch.setattr(T2ARecRequests, "__init__", counting_init)
    score_batch_scoped(model, batch, CFG)  # nine requests, one step
    assert calls == {"grad": 1, "alignment_loss": 0, "states": 1}
    score_batch_scoped(model, batch, dataclasses.replace(CFG, steps=3))
    assert calls == {"grad": 4, "alignment_loss": 0, "states": 2}


def test_the_model_is_never_modified():
    model, batch = make()
    before = {k: (v.clone(), v._version) for k, v in model.state_dict(keep_vars=True).items()}
    score_batch_scoped(model, batch, CFG)
    for key, value in model.state_dict(keep_vars=True).items():
        assert torch.equal(value, before[key][0]) and value._version == before[key][1], key


def test_scores_are_the_adapted_table_of_each_request():
    """q_r . (E + dE_r): the trained product plus the sparse correction equals a per-request table."""
    model, batch = make(dtype=torch.float64)
    requests = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    got, _ = score_batch_scoped(model, batch, CFG, requests=requests)
    state = T2ARecRequests(model, batch, requests, 5, CFG.mu_time, CFG.mu_state)
    align_module._step_requests(state, CFG)
    with torch.no_grad():
        query = state.query()
        for row, r in enumerate(requests.tolist()):
            table = model.item_embedding.weight.detach().clone()
            table[state.items[r]] = state.rows[r]
            torch.testing.assert_close(got[row], table[1:] @ query[row], rtol=1e-12, atol=1e-12)


def test_corrected_scores_by_blocks_and_columns_equal_the_dense_matrix():
    torch.manual_seed(1)
    query, weight = torch.randn(5, 8), torch.randn(40, 8)
    rows = torch.tensor([0, 0, 1, 3, 4, 4, 4])
    items = torch.tensor([3, 39, 3, 0, 17, 18, 38])
    values = torch.randn(7)
    scores = CorrectedScores(query, ItemTable(weight), rows, items, values)
    dense = CorrectedScores(query, ItemTable(weight), rows[:0], items[:0], values[:0]).block(0, 40)
    dense[rows, items] += values
    assert torch.equal(scores.block(0, 40), dense)
    assert torch.equal(torch.cat([scores.block(s, min(s + 7, 40)) for s in range(0, 40, 7)], dim=1), dense)
    picked = torch.tensor([17, 3, 5, 3, 39, 0, 17])  # repeats, and items with no correction
    assert torch.equal(scores.columns(picked), dense[:, picked])
    top = top_k(scores, [3] * 5, [None] * 5, chunk=6)
    want = torch.sort(dense, dim=1, descending=True, stable=True)
    assert [t[0] for t in top] == (want.indices[:, :3] + 1).tolist()


@pytest.mark.parametrize("thread_count", [1, 2])
def test_a_few_rows_score_as_in_a_larger_batch(thread_count):
    """MKL's kernels for a few query rows round differently (machine-dependent: one or two rows on an
    Intel CPU, up to eleven on an AMD EPYC): ``CorrectedScores`` pads the rows, so a row's scores are the
    same bits in a batch of any size."""
    torch.manual_seed(2)
    query, weight = torch.randn(40, 64), torch.randn(3000, 64)
    empty = torch.zeros(0, dtype=torch.int64)
    with threads(thread_count):
        full = CorrectedScores(query, ItemTable(weight), empty, empty, empty.float()).block(0, 3000)
        for n in range(1, 20):
            part = CorrectedScores(query[:n], ItemTable(weight), empty, empty, empty.float()).block(0, 3000)
            assert torch.equal(part, full[:n]), n


def test_evaluation_in_request_scope_is_every_user_aligned_alone():
    from t2arec.data.batching import Examples
    from t2arec.evaluate import evaluate

    model, batch = make()
    examples = Examples(batch.items.numpy(), batch.gaps.numpy(), batch.next_gap.numpy(), batch.targets.numpy(),
                        np.arange(9), np.arange(9, dtype=np.float64))
    by_request = evaluate(model, examples, CFG, batch_size=4)
    one_by_one = evaluate(model, examples, dataclasses.replace(CFG, scope="batch"), batch_size=1)
    assert np.array_equal(by_request.ranks, one_by_one.ranks)
    assert len(by_request.param_shift) == 3 and all(s > 0 for s in by_request.param_shift)
    batch_scope = evaluate(model, examples, dataclasses.replace(CFG, scope="batch"), batch_size=4)
    assert not np.array_equal(batch_scope.ranks, by_request.ranks)  # the scopes differ here


def test_without_a_step_the_scopes_are_the_same():
    model, batch = make()
    for cfg in (dataclasses.replace(CFG, enabled=False), dataclasses.replace(CFG, steps=0), None):
        got, stats = use_scores_scoped(model, batch, cfg, lambda s: s.block(0, s.num_items))
        plain, _ = score_batch(model, batch, None)
        assert stats is None and torch.equal(got, plain)


def test_scope_is_validated_and_set_by_overrides():
    with pytest.raises(ValueError, match="align.scope must be 'batch' or 'request'"):
        AlignConfig(scope="user")
    cfg = RunConfig()
    assert cfg.align.scope == "batch"  # evaluation keeps the paper's batch step
    apply_overrides(cfg, ["align.scope=request"])
    validate(cfg)
    assert cfg.align.scope == "request"
    apply_overrides(cfg, ["align.scope=everyone"])
    with pytest.raises(ConfigError, match="align.scope"):
        validate(cfg)


def test_models_without_a_per_request_step_say_so():
    model, batch = make(num_layers=2)
    with pytest.raises(ValueError, match="one T2ARec layer"):
        score_batch_scoped(model, batch, CFG)
    from t2arec.models.sasrec import SASRec, SASRecConfig

    sasrec = SASRec(SASRecConfig(num_items=300)).eval()
    scores, stats = score_batch_scoped(sasrec, batch, CFG)  # no alignment loss: nothing to align, no error
    assert stats is None and scores.shape == (9, 300)


def test_request_labels_must_cover_every_row():
    model, batch = make()
    with pytest.raises(ValueError, match="one label per row"):
        score_batch_scoped(model, batch, CFG, requests=[0, 1])
