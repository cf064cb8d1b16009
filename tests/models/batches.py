"""Small batch builders shared by the model tests (no timestamps: gaps are zero)."""
import torch

from t2arec.models.base import SeqBatch


def eval_batch(items) -> SeqBatch:
    items = torch.as_tensor(items, dtype=torch.long)
    b, length = items.shape
    return SeqBatch(items, torch.zeros(b, length), torch.zeros(b), torch.zeros(b, dtype=torch.long))


def train_batch(items, targets) -> SeqBatch:
    items = torch.as_tensor(items, dtype=torch.long)
    b, length = items.shape
    return SeqBatch(items, torch.zeros(b, length), torch.zeros(b), torch.as_tensor(targets, dtype=torch.long))


def shift_batch(sequences, length) -> SeqBatch:
    """Left-padded training windows: input s[:-1], target s[1:]."""
    items = [[0] * (length - len(s) + 1) + s[:-1] for s in sequences]
    targets = [[0] * (length - len(s) + 1) + s[1:] for s in sequences]
    return train_batch(items, targets)


def reference_rec_loss(hidden, item_weight, targets):
    """The rec loss computed independently of ``losses.full_cross_entropy``: ``F.cross_entropy`` over
    explicit logits against items 1..N (row 0 of ``item_weight`` is padding), averaged over every
    position with a target. hidden: (B, L, d) model outputs; targets: (B, L), 0 = no target."""
    import torch.nn.functional as F

    has_target = targets > 0
    logits = hidden[has_target] @ item_weight[1:].T
    return F.cross_entropy(logits, targets[has_target] - 1)


def assert_every_parameter_learns(model, exempt=()) -> None:
    """After ``backward``: every trainable parameter (except ``exempt`` names) has a finite gradient
    that is not all zeros, so no part of the model is cut off from the loss."""
    for name, param in model.named_parameters():
        if not param.requires_grad or name in exempt:
            continue
        assert param.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient"


def assert_same_gradients(model, loss, reference, rtol=1e-4, atol=1e-7) -> None:
    """``loss`` and the independently computed ``reference`` give the same gradient for every
    parameter (so the chunked cross-entropy's hand-written backward is checked too)."""
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(reference, params, retain_graph=True, allow_unused=True, materialize_grads=True)
    for (name, _), g, w in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), got, want):
        assert torch.allclose(g, w, rtol=rtol, atol=atol), name
