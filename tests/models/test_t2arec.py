import math

import pytest
import torch
import torch.nn.functional as F

from t2arec.models.base import SeqBatch
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from tests.models.batches import assert_every_parameter_learns, assert_same_gradients, reference_rec_loss


def tiny_model(**overrides) -> T2ARec:
    torch.manual_seed(0)
    # the spec's block (no output gate) unless a test asks for the gate: the hand computations below
    # slice the in-projection as the spec lays it out
    cfg = T2ARecConfig(num_items=20, hidden_size=8, state_size=4, dropout=0.0, chunk_size=4,
                       **{"output_gate": False, **overrides})
    return T2ARec(cfg).double().eval()


def make_batch(items, gaps, next_gap, targets=None) -> SeqBatch:
    items = torch.tensor(items, dtype=torch.long)
    return SeqBatch(items, torch.tensor(gaps, dtype=torch.float64), torch.tensor(next_gap, dtype=torch.float64),
                    torch.zeros(items.shape[0], dtype=torch.long) if targets is None else torch.tensor(targets))


def test_left_padding_is_an_exact_no_op():
    model = tiny_model()
    seq, gaps = [3, 7, 7, 1, 12, 5], [0.0, 60.0, 5.0, 3600.0, 10.0, 86400.0]
    outputs = []
    for pad in (0, 1, 5, 11):
        batch = make_batch([[0] * pad + seq], [[0.0] * pad + gaps], [120.0])
        with torch.no_grad():
            scores = model.score(batch)
        loss = model.alignment_loss(batch, 1.0, 1.0)
        outputs.append((scores, loss))
    for scores, loss in outputs[1:]:
        assert torch.allclose(scores, outputs[0][0], atol=1e-10, rtol=0)
        assert torch.allclose(loss, outputs[0][1], atol=1e-10, rtol=0)


def test_padding_invariance_holds_with_stacked_layers_and_gate():
    model = tiny_model(num_layers=2, output_gate=True)
    seq = [4, 9, 2]
    a = model.score(make_batch([seq], [[0.0, 1.0, 2.0]], [3.0]))
    b = model.score(make_batch([[0, 0, 0, 0, 0] + seq], [[0.0] * 5 + [0.0, 1.0, 2.0]], [3.0]))
    assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_chunked_model_equals_sequential_model():
    """The chunked SSD scan inside the model equals the sequential loop at every position: full
    ``encode`` outputs, the trace, gradients, scores and the alignment loss, with the inference
    shortcut off so that prediction goes through the scan too. Length 11 with chunks of 4: three
    chunks, the first one partial, so state passing between chunks is exercised."""
    model = tiny_model(fast_inference=False)
    reference = tiny_model(fast_inference=False, sequential_scan=True)
    reference.load_state_dict(model.state_dict())
    assert model.cfg.chunk_size == 4
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                          [0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 13]])
    gaps = (torch.arange(11, dtype=torch.float64) * 7.0).expand(3, 11) * (items > 0)
    batch = SeqBatch(items, gaps, torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    o, trace = model.encode(items)
    o_ref, trace_ref = reference.encode(items)
    assert o.shape == (3, 11, 8)
    assert torch.allclose(o, o_ref, atol=1e-10, rtol=0)
    for field in ("delta", "final_state", "x_last"):
        assert torch.allclose(getattr(trace, field), getattr(trace_ref, field), atol=1e-10, rtol=0), field
    weights = torch.randn_like(o)
    grads = torch.autograd.grad((o * weights).sum(), list(model.parameters()), allow_unused=True,
                                materialize_grads=True)
    grads_ref = torch.autograd.grad((o_ref * weights).sum(), list(reference.parameters()), allow_unused=True,
                                    materialize_grads=True)
    for (name, _), got, want in zip(model.named_parameters(), grads, grads_ref):
        assert torch.allclose(got, want, atol=1e-10, rtol=0), name
    assert torch.allclose(model.score(batch), reference.score(batch), atol=1e-10, rtol=0)
    assert torch.allclose(model.alignment_loss(batch, 1, 1), reference.alignment_loss(batch, 1, 1), atol=1e-10)


def test_heads_run_their_own_recurrence_over_their_channels():
    """With H heads each head h has its own Delta_h, A_h and D_h over channels h P .. (h + 1) P, and all
    heads read the same B and C: the block's output and final state equal that loop, written here
    without the folding of heads into the batch that the block does."""
    model = tiny_model(num_heads=2)  # chunks of 4 over 7 positions: the first partial
    mixer = model.layers[0].mixer
    with torch.no_grad():  # heads that differ, so that a mixed-up head shows
        mixer.dt_bias.copy_(torch.tensor([-3.0, 0.5]))
        mixer.A_log.copy_(torch.tensor([0.0, 1.5]))
        mixer.D.copy_(torch.tensor([0.3, -2.0]))
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7]])
    u = model.embed(items)
    out, trace = mixer(u, items > 0)
    projected = mixer.in_proj(u)
    conv_in = projected[..., :-2] * (items > 0)[..., None]
    xbc = F.silu(F.conv1d(F.pad(conv_in.transpose(1, 2), (3, 0)), mixer.conv.weight, mixer.conv.bias,
                          groups=conv_in.shape[-1]).transpose(1, 2))
    x, b, c = xbc[..., :8] * (items > 0)[..., None], xbc[..., 8:12], xbc[..., 12:16]
    assert trace.delta.shape == (2, 7, 2) and trace.final_state.shape == (2, 2, 4, 4)
    for row in range(2):
        y = torch.zeros(7, 8, dtype=torch.float64)
        for head, channels in enumerate((slice(0, 4), slice(4, 8))):
            h = torch.zeros(4, 4, dtype=torch.float64)
            for i in range(7):
                delta = F.softplus(projected[row, i, -2 + head] + mixer.dt_bias[head]) * (items[row, i] > 0)
                assert torch.allclose(trace.delta[row, i, head], delta, atol=1e-12)
                h = torch.exp(-delta * torch.exp(mixer.A_log[head])) * h + delta * torch.outer(b[row, i], x[row, i, channels])
                y[i, channels] = c[row, i] @ h + mixer.D[head] * x[row, i, channels]
            assert torch.allclose(trace.final_state[row, head], h, atol=1e-12)
        assert torch.allclose(out[row], mixer.out_proj(y), atol=1e-12)


def test_state_loss_with_heads_sums_each_heads_formula():
    """Each head's share of ||h_n - h^b_n||^2 is divided by its own Delta_{n+1}^2, then the shares add."""
    model = tiny_model(num_heads=2)
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.P.copy_(torch.tensor([0.7, -0.4]))
        mixer.dt_bias.copy_(torch.tensor([-2.0, 1.0]))
    items = torch.tensor([[0, 3, 6, 2], [5, 1, 9, 9]])
    batch = make_batch(items.tolist(), [[0.0, 0.0, 30.0, 60.0], [0.0, 5.0, 6.0, 100.0]], [90.0, 1.0])
    o, trace = model.encode(items)
    x_next, b_next, delta_next = mixer.refeed(o[:, -1], trace.conv_tail)
    state = model.state_loss(trace, x_next, b_next, delta_next)
    q = mixer.q_proj(trace.x_last)
    expected = torch.zeros((), dtype=torch.float64)
    for row in range(2):
        for head, channels in enumerate((slice(0, 4), slice(4, 8))):
            dn, a = delta_next[row, head], -torch.exp(mixer.A_log[head])
            h = trace.final_state[row, head]
            forward = torch.exp(dn * a) * h + dn * torch.outer(b_next[row], x_next[row, channels])
            backward = torch.exp(dn * mixer.P[head]) * forward + dn * torch.outer(q[row], trace.x_last[row, channels])
            expected = expected + ((h - backward) ** 2).sum() / dn**2 / 2  # mean over the 2 rows
    assert state.item() == pytest.approx(expected.item(), rel=1e-9)


def test_time_loss_with_heads_averages_the_heads():
    model = tiny_model(time_transform="identity", time_scale=2.0, time_block=16, num_heads=2)
    batch = make_batch([[0, 1, 2, 3, 4]], [[0.0, 0.0, 2.0, 1.0, 3.0]], [4.0])
    first = torch.tensor([[0.0, 0.1, 0.3, 0.2, 0.6]], dtype=torch.float64)
    second = torch.tensor([[0.0, 0.5, 0.1, 0.9, 0.2]], dtype=torch.float64)
    both = model.time_loss(batch, torch.stack([first, second], dim=-1), torch.tensor([[0.4, 0.05]], dtype=torch.float64))
    one = tiny_model(time_transform="identity", time_scale=2.0, time_block=16)
    separately = [one.time_loss(batch, d[..., None], torch.tensor([[n]], dtype=torch.float64))
                  for d, n in ((first, 0.4), (second, 0.05))]
    assert separately[0].item() != pytest.approx(separately[1].item())
    assert both.item() == pytest.approx((separately[0].item() + separately[1].item()) / 2, abs=1e-12)


def test_heads_must_divide_the_hidden_size():
    with pytest.raises(ValueError, match="num_heads"):
        T2ARecConfig(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        T2ARecConfig(hidden_size=64, expand=3, num_heads=5)
    with pytest.raises(ValueError, match="expand"):
        T2ARecConfig(expand=0)


def test_expansion_widens_the_mixer_and_keeps_the_model_width():
    """expand = 2: x, the gate and the state's columns are 2d wide, W_out maps 2d back to d, and the
    embeddings, the FFN and the outputs stay at d. Padding stays a no-op and the chunked scan still
    equals the sequential loop."""
    model = tiny_model(expand=2, output_gate=True)
    mixer = model.layers[0].mixer
    assert mixer.in_proj.weight.shape == (16 + 16 + 2 * 4 + 1, 8)  # z, x~, B~, C~, dt from d = 8
    assert mixer.out_proj.weight.shape == (8, 16) and mixer.q_proj.weight.shape == (4, 16)
    assert model.item_embedding.weight.shape == (21, 8)
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    o, trace = model.encode(items)
    assert o.shape == (2, 9, 8) and trace.final_state.shape == (2, 1, 4, 16) and trace.x_last.shape == (2, 16)
    reference = tiny_model(expand=2, output_gate=True, sequential_scan=True)
    reference.load_state_dict(model.state_dict())
    assert torch.allclose(o, reference.encode(items)[0], atol=1e-10, rtol=0)
    padded = model.encode(torch.cat([torch.zeros(2, 5, dtype=torch.long), items], dim=1))[0]
    assert torch.allclose(padded[1, -9:], o[1], atol=1e-10, rtol=0)


def test_refeed_is_step_n_plus_one_of_the_same_transform():
    model = tiny_model()
    mixer = model.layers[0].mixer
    items = torch.tensor([[2, 5, 9, 11, 4]])
    mask = items > 0
    o, trace = model.encode(items)
    u = model.embed(items)
    x_next, _, delta_next = mixer.refeed(o[:, -1], trace.conv_tail)
    # run the block on u_1..u_n followed by o_n as token n+1
    u_ext = torch.cat([u, o[:, -1:]], dim=1)
    out_ext, trace_ext = mixer(u_ext, torch.ones(1, 6, dtype=torch.bool))
    out, _ = mixer(u, mask)
    assert torch.allclose(trace_ext.delta[:, -1], delta_next, atol=1e-12)
    assert torch.allclose(trace_ext.x_last, x_next, atol=1e-12)
    assert torch.allclose(out_ext[:, :-1], out, atol=1e-12)  # nothing changes at positions 1..n


def hinge_by_hand(delta, t, pairs, lam):
    losses = [max(0.0, 1 - (delta[i] - delta[j]) * (t[i] - t[j]) / lam) for i, j in pairs]
    return sum(losses) / len(losses)


def test_time_loss_hand_computed_single_block():
    model = tiny_model(time_transform="identity", time_scale=2.0, time_block=16)
    batch = make_batch([[0, 1, 2, 3, 4]], [[0.0, 0.0, 2.0, 1.0, 3.0]], [4.0])
    delta = torch.tensor([[0.0, 0.1, 0.3, 0.2, 0.6]], dtype=torch.float64)
    delta_next = torch.tensor([0.4], dtype=torch.float64)
    loss = model.time_loss(batch, delta[..., None], delta_next[..., None])
    # valid: positions 2, 3, 4 of the sequence (T = 2, 1, 3) and step n+1 (T = 4); not the first item
    d = {2: 0.3, 3: 0.2, 4: 0.6, 5: 0.4}
    t = {2: 2.0, 3: 1.0, 4: 3.0, 5: 4.0}
    pairs = [(i, j) for i in d for j in d if i < j]
    # e.g. pair (4, 5): 1 - (0.6 - 0.4) * (3 - 4) / 2 = 1.1
    assert loss.item() == pytest.approx(hinge_by_hand(d, t, pairs, 2.0), abs=1e-12)


def test_time_loss_blocks_are_aligned_to_the_end_and_pairs_stay_inside():
    model = tiny_model(time_transform="identity", time_scale=1.0, time_block=2)
    batch = make_batch([[1, 2, 3, 4]], [[0.0, 5.0, 1.0, 2.0]], [10.0])
    delta = torch.tensor([[0.5, 0.1, 0.2, 0.3]], dtype=torch.float64)
    delta_next = torch.tensor([0.05], dtype=torch.float64)
    loss = model.time_loss(batch, delta[..., None], delta_next[..., None])
    # entries (p1..p4, n+1) padded to 6 on the left -> blocks (pad, p1) (p2, p3) (p4, n+1); p1 has no predecessor
    d = {2: 0.1, 3: 0.2, 4: 0.3, 5: 0.05}
    t = {2: 5.0, 3: 1.0, 4: 2.0, 5: 10.0}
    assert loss.item() == pytest.approx(hinge_by_hand(d, t, [(2, 3), (4, 5)], 1.0), abs=1e-12)


def test_time_loss_log1p_transform():
    model = tiny_model(time_transform="log1p", time_scale=0.5, time_block=16)
    batch = make_batch([[7, 8]], [[0.0, 100.0]], [10.0])
    loss = model.time_loss(batch, torch.tensor([[[0.2], [0.3]]], dtype=torch.float64), torch.tensor([[0.1]], dtype=torch.float64))
    expected = max(0.0, 1 - (0.3 - 0.1) * (math.log1p(100.0) - math.log1p(10.0)) / 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("state_p", ["learned", "theorem"])
def test_state_loss_matches_the_formulas_of_the_spec(state_p):
    model = tiny_model(state_p=state_p)
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.P.fill_(0.7)
    items = torch.tensor([[0, 3, 6, 2]])
    batch = make_batch(items.tolist(), [[0.0, 0.0, 30.0, 60.0]], [90.0])
    o, trace = model.encode(items)
    _, state = model.self_supervised_losses(batch, o[:, -1], trace)
    # by hand: run the recurrence in a loop, then the forward and backward states
    z = mixer.in_proj(model.embed(items))
    conv_in = z[..., :-1] * (items > 0)[..., None]
    dt = z[..., -1]
    xbc = F.silu(F.conv1d(F.pad(conv_in.transpose(1, 2), (3, 0)), mixer.conv.weight, mixer.conv.bias, groups=conv_in.shape[-1]).transpose(1, 2))
    x, b = xbc[..., :8], xbc[..., 8:12]
    h = torch.zeros(4, 8, dtype=torch.float64)
    A = -math.exp(mixer.A_log.item())
    for i in range(1, 4):  # position 0 is padding
        delta_i = F.softplus(dt[0, i] + mixer.dt_bias)
        h = torch.exp(delta_i * A) * h + delta_i * torch.outer(b[0, i], x[0, i])
    z_next = mixer.in_proj(o[0, -1])
    window = torch.cat([conv_in[0, 1:], z_next[:-1][None]], dim=0)  # positions 2..4 and n+1
    xbc_next = F.silu((window.T * mixer.conv.weight[:, 0, :]).sum(-1) + mixer.conv.bias)
    x_next, b_next = xbc_next[:8], xbc_next[8:12]
    delta_next = F.softplus(z_next[-1] + mixer.dt_bias)
    forward = torch.exp(delta_next * A) * h + delta_next * torch.outer(b_next, x_next)
    p_bar = torch.exp(delta_next * 0.7) if state_p == "learned" else torch.tensor(-1.0 / A, dtype=torch.float64)
    q = mixer.q_proj.weight @ x[0, -1]
    backward = p_bar * forward + delta_next * torch.outer(q, x[0, -1])
    expected = ((h - backward) ** 2).sum() / delta_next**2
    assert state.item() == pytest.approx(expected.item(), rel=1e-9)


def test_training_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    model = T2ARec(T2ARecConfig(num_items=20, hidden_size=8, state_size=4, chunk_size=4, dropout=0.0), mu_time=0.1, mu_state=1.0)
    items = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    targets = torch.tensor([[0, 0, 2, 3, 4], [5, 6, 7, 8, 9]])
    batch = SeqBatch(items, torch.rand(2, 5) * 100, torch.tensor([10.0, 20.0]), targets)
    losses = model.training_losses(batch)
    assert set(losses) == {"rec", "time", "state", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    o, _ = model.encode(items)
    assert_same_gradients(model, losses["rec"], reference_rec_loss(o, model.item_embedding.weight, targets))
    losses["total"].backward()
    # every parameter learns (P and W_q through L_state, dt_bias through both losses), except padding
    assert_every_parameter_learns(model)
    assert model.item_embedding.weight.grad[0].abs().sum() == 0
    with torch.no_grad():
        o, trace = model.encode(items)
        # the rec loss is the mean cross-entropy over the 7 real targets, by F.cross_entropy
        reference = reference_rec_loss(o, model.item_embedding.weight, targets)
        time, state = model.self_supervised_losses(batch, o[:, -1], trace)
    assert losses["rec"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert losses["time"].item() == pytest.approx(time.item(), rel=1e-6)
    assert losses["state"].item() == pytest.approx(state.item(), rel=1e-6)
    assert losses["total"].item() == pytest.approx(reference.item() + 0.1 * time.item() + 1.0 * state.item(), rel=1e-5)


def test_padding_never_ranks():
    """Item 0 has no score column: even when the padding row of E would outscore every item, the
    scores are exactly E[1:] o_n, none of them is the padding's, and the top item is a real one."""
    model = tiny_model()
    batch = make_batch([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]], [[0.0, 0.0, 0.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0, 2.0]],
                       [1.0, 3.0])
    with torch.no_grad():
        before = model.score(batch)
        o_n, _ = model.encode(batch.items)
        o_n = o_n[:, -1]
        # a padding row along the users' mean output, far longer than any item's
        model.item_embedding.weight[0] = 1e3 * o_n.mean(dim=0) / o_n.mean(dim=0).norm()
        padding_score = o_n @ model.item_embedding.weight[0]
        assert (padding_score > (o_n @ model.item_embedding.weight[1:].T).max(dim=1).values).all()
        scores = model.score(batch)
    assert scores.shape == (2, 20)  # items 1..20 only
    assert torch.equal(scores, before)  # the padding row reaches neither the inputs nor the scores
    assert torch.allclose(scores, o_n @ model.item_embedding.weight[1:].T, atol=1e-12)
    assert (scores < padding_score[:, None]).all()  # no column holds the padding's score
    # the evaluator's 1-based item of the top column is a real item, and the same as without the change
    from t2arec.serve.recommender import top_k

    top = top_k(scores, [1, 1], [None, None])
    assert [items for items, _ in top] == [[int(before[0].argmax()) + 1], [int(before[1].argmax()) + 1]]
    assert all(items[0] >= 1 for items, _ in top)


def random_batch(rows=6, length=10, num_items=20, seed=1) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, num_items + 1, (rows, length), generator=g)
    items[0, :4] = 0  # left padding in one row
    items[1, :9] = 0  # a single item in another
    gaps = torch.rand(rows, length, generator=g, dtype=torch.float64) * 1e4 * (items > 0)
    return SeqBatch(items, gaps, torch.rand(rows, generator=g, dtype=torch.float64) * 1e4,
                    torch.randint(1, num_items + 1, (rows,), generator=g))


def slow_copy(model: T2ARec) -> T2ARec:
    """The same weights with every inference shortcut off (full per-position outputs, no table)."""
    import dataclasses

    slow = T2ARec(dataclasses.replace(model.cfg, fast_inference=False, use_item_table=False)).double().eval()
    slow.load_state_dict(model.state_dict())
    return slow


SHORT = SeqBatch(torch.tensor([[0, 4], [7, 3]] * 12), torch.ones(24, 2, dtype=torch.float64),
                 torch.ones(24, dtype=torch.float64), torch.ones(24, dtype=torch.long))  # L < conv kernel


@pytest.mark.parametrize("overrides", [{}, {"num_layers": 2}, {"single_layer_residual": True, "output_gate": True},
                                       {"num_heads": 2}, {"expand": 2, "output_gate": True},
                                       {"expand": 3, "num_heads": 2}])
@pytest.mark.parametrize("short", [False, True])
@pytest.mark.parametrize("cache_tokens", [None, 7])
def test_fast_inference_equals_the_full_computation(overrides, short, cache_tokens, monkeypatch):
    if cache_tokens:  # a few sequences per chunk, the last chunk partial
        monkeypatch.setattr("t2arec.models.last_state.CACHE_TOKENS", cache_tokens * (2 if short else 12))
    model = tiny_model(**overrides)
    slow = slow_copy(model)
    batch = SHORT if short else random_batch()
    table = model.cfg.num_layers == 1 and model.cfg.num_heads == 1  # the table path computes one head
    assert model.use_table(batch.items) == table and not slow.use_table(batch.items)
    assert torch.allclose(model.score(batch), slow.score(batch), atol=1e-12)
    fast_loss = model.alignment_loss(batch, 0.3, 0.7)
    slow_loss = slow.alignment_loss(batch, 0.3, 0.7)
    assert torch.allclose(fast_loss, slow_loss, atol=1e-12)
    fast_grads = torch.autograd.grad(fast_loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
    slow_grads = torch.autograd.grad(slow_loss, list(slow.parameters()), allow_unused=True, materialize_grads=True)
    for (name, _), got, want in zip(model.named_parameters(), fast_grads, slow_grads):
        assert torch.allclose(got, want, atol=1e-12), name


def test_the_item_table_follows_every_parameter_change():
    model = tiny_model()
    batch = random_batch()
    with torch.no_grad():  # inference: the table is cached
        before = model.score(batch)
        assert torch.equal(model.score(batch), before)
        # in place, as an optimiser step or the alignment step and its restore do
        model.item_embedding.weight[1:].add_(torch.randn_like(model.item_embedding.weight[1:]))
        after = model.score(batch)
        assert not torch.allclose(before, after)
        assert torch.allclose(after, slow_copy(model).score(batch), atol=1e-12)
        model.layers[0].mixer.in_proj.weight.mul_(2.0)
        assert torch.allclose(model.score(batch), slow_copy(model).score(batch), atol=1e-12)


def test_training_mode_never_uses_the_table():
    model = tiny_model().train()
    assert not model.use_table(random_batch().items)


def test_aligned_scores_with_and_without_the_shortcuts_agree_in_float32():
    from t2arec.align import AlignConfig, score_batch

    torch.manual_seed(0)
    cfg = T2ARecConfig(num_items=20, hidden_size=16, state_size=8, dropout=0.0, chunk_size=4)
    fast = T2ARec(cfg).eval()
    import dataclasses

    slow = T2ARec(dataclasses.replace(cfg, fast_inference=False, use_item_table=False)).eval()
    slow.load_state_dict(fast.state_dict())
    batch = random_batch(rows=8, length=12)
    batch = SeqBatch(batch.items, batch.gaps.float(), batch.next_gap.float(), batch.targets)
    align = AlignConfig(lr=5.0)  # a step large enough to move the scores
    fast_scores, fast_stats = score_batch(fast, batch, align)
    slow_scores, slow_stats = score_batch(slow, batch, align)
    plain, _ = score_batch(fast, batch, None)
    assert not torch.allclose(fast_scores, plain, atol=1e-4)
    assert torch.allclose(fast_scores, slow_scores, atol=1e-5)
    assert fast_stats.param_shift == pytest.approx(slow_stats.param_shift, rel=1e-4)


def test_the_default_block_is_gated_and_the_spec_block_has_the_papers_projection_size():
    d, ds = 8, 4
    gated = T2ARec(T2ARecConfig(num_items=20, hidden_size=d, state_size=ds))
    spec = T2ARec(T2ARecConfig(num_items=20, hidden_size=d, state_size=ds, output_gate=False))
    assert gated.layers[0].mixer.in_proj.out_features == d + (d + 2 * ds + 1)  # z, then the paper's Linear_1
    assert spec.layers[0].mixer.in_proj.out_features == d + 2 * ds + 1
