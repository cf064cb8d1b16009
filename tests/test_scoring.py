"""Scores by blocks of items: the running top-k equals a stable sort of the whole row, and neither
evaluation nor recommendation ever makes a tensor of the whole (batch, catalogue) size."""
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from t2arec.align import AlignConfig
from t2arec.config import RunConfig
from t2arec.data.batching import Examples
from t2arec.evaluate import evaluate
from t2arec.models.base import ItemTable
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from t2arec.scoring import DenseScores, NonFiniteScores, TableScores, chunk_size, stable_top, top_k
from t2arec.serve import History, Recommender


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sorted_top_k(scores, ks, exclude):
    """The top-k of before blocks: a stable descending sort of every whole row (ties: item order)."""
    masked = scores.clone()
    for row, items in enumerate(exclude):
        if items is not None and len(items):
            masked[row, torch.as_tensor(items, dtype=torch.int64) - 1] = -math.inf
    width = min(max(ks), scores.shape[1])
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :width]
    top = masked.gather(1, order)
    out = []
    for row, k in enumerate(ks):
        keep = torch.isfinite(top[row, :k])
        out.append(((order[row, :k][keep] + 1).tolist(), top[row, :k][keep].tolist()))
    return out


def tied_scores(rows: int, items: int, seed: int, non_finite: bool = False) -> torch.Tensor:
    """Scores from a handful of values, so that most items are tied with others."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (rows, items), generator=g).float() / 4
    if non_finite:
        for value in (math.nan, math.inf, -math.inf):
            scores[torch.rand(rows, items, generator=g) < 0.1] = value
    return scores


@pytest.mark.parametrize("seed", range(6))
def test_stable_top_is_the_head_of_a_stable_sort(seed):
    scores = tied_scores(5, 37, seed)
    for width in (1, 4, 36, 37):
        values, columns = stable_top(scores, width)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :width]
        assert torch.equal(columns, order) and torch.equal(values, scores.gather(1, order))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 7, 23, 24, None])
def test_top_k_by_blocks_equals_the_sorted_top_k(seed, chunk):
    """Ties, exclusions, a k larger than the catalogue and per-row k: the same items, scores and order."""
    scores = tied_scores(4, 23, seed, non_finite=seed % 2 == 1)
    ks = [3, 30, 1, 10]
    exclude = [np.array([1, 2, 5]), None, np.array([]), np.arange(1, 20)]
    assert top_k(DenseScores(scores), ks, exclude, chunk) == sorted_top_k(scores, ks, exclude)


@pytest.mark.parametrize("chunk", [7, None])
def test_ties_at_the_kth_score_are_counted_a_row_slice_at_a_time(chunk, monkeypatch):
    monkeypatch.setattr("t2arec.scoring.COUNT_VALUES", 5)  # one row at a time, as in a large block
    scores = tied_scores(6, 23, 0)
    ks = [3, 4, 1, 2, 2, 3]
    assert top_k(DenseScores(scores), ks, [None] * 6, chunk) == sorted_top_k(scores, ks, [None] * 6)


@pytest.mark.parametrize("chunk", [1, 7, 50, 51])
def test_top_k_of_an_item_table_with_tied_items_and_a_bias(chunk):
    # small integers: every score is exact, whatever product computes it (a block of one item is a
    # matrix-vector product, whose rounding differs from the full product's in the last bit)
    g = torch.Generator().manual_seed(0)
    weight = torch.randint(-3, 4, (50, 6), generator=g).float()
    weight[25:] = weight[:25]  # items 26..50 tie with items 1..25
    bias = torch.randint(-2, 3, (50,), generator=g).float()
    bias[25:] = bias[:25]
    table, query = ItemTable(weight, bias), torch.randint(-3, 4, (9, 6), generator=g).float()
    ks, exclude = [5] * 8 + [50], [None] * 8 + [np.array([3])]
    got = top_k(TableScores(query, table), ks, exclude, chunk)
    assert got == sorted_top_k(table.scores(query), ks, exclude)
    first = got[0][0]
    assert any(item + 25 in first for item in first if item <= 25)  # a twin pair made the top 5: a tie was ordered


def test_non_finite_scores_raise_block_by_block_when_required():
    scores = torch.zeros(2, 30)
    scores[1, 29] = math.nan  # in the last block only
    with pytest.raises(NonFiniteScores):
        top_k(DenseScores(scores), [3, 3], [None, None], chunk=7, require_finite=True)
    # without the check, as before blocks: the NaN sorts first and is not returned
    unchecked = top_k(DenseScores(scores), [3, 3], [None, None], chunk=7)
    assert unchecked == sorted_top_k(scores, [3, 3], [None, None]) and unchecked[1] == ([1, 2], [0.0, 0.0])


def test_chunk_size_fills_the_block_budget():
    assert chunk_size(4096, 10**6) == 2**26 // 4096
    assert chunk_size(1, 10**6) == 10**6  # one user: the whole catalogue in one product
    assert chunk_size(4096, 3000) == 3000
    assert chunk_size(4, 100, chunk=7) == 7 and chunk_size(4, 100, chunk=1000) == 100
    with pytest.raises(ValueError):
        chunk_size(4, 100, chunk=0)


# --- memory: no tensor of the (batch, catalogue) size ------------------------------------------------
class LargestNewTensor(TorchDispatchMode):
    """Records the largest tensor any operation creates (views of existing tensors are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.numel = max([self.numel, *sizes])
        return out


ITEMS, DIM, ROWS, LENGTH, CHUNK = 5000, 8, 32, 6, 100


def big_catalogue_model() -> T2ARec:
    torch.manual_seed(0)
    return T2ARec(T2ARecConfig(num_items=ITEMS, hidden_size=DIM, state_size=4, chunk_size=4)).eval()


def random_examples(rows: int) -> Examples:
    rng = np.random.default_rng(0)
    return Examples(rng.integers(1, ITEMS + 1, (rows, LENGTH)), rng.random((rows, LENGTH)).astype(np.float32),
                    rng.random(rows).astype(np.float32), rng.integers(1, ITEMS + 1, rows), np.arange(rows),
                    np.zeros(rows))


# What may be allocated besides a block: the table's size (the test-time step's gradient and its
# snapshot of the parameters). A (ROWS, ITEMS) score matrix is four times that.
BOUND = max(ROWS * CHUNK, (ITEMS + 1) * DIM)
assert ROWS * ITEMS > 2 * BOUND


@pytest.mark.parametrize("align", [None, AlignConfig(lr=1.0)])
def test_evaluation_never_makes_a_batch_by_catalogue_tensor(align):
    model, examples = big_catalogue_model(), random_examples(ROWS)
    with LargestNewTensor() as blocks:
        by_blocks = evaluate(model, examples, align, batch_size=ROWS, chunk=CHUNK).ranks
    assert blocks.numel <= BOUND
    with LargestNewTensor() as whole:  # the probe sees the full matrix when there is one
        at_once = evaluate(model, examples, align, batch_size=ROWS).ranks
    assert whole.numel >= ROWS * ITEMS
    assert np.array_equal(by_blocks, at_once)


def test_recommendation_never_makes_a_batch_by_catalogue_tensor():
    cfg = RunConfig()
    cfg.data.max_len = LENGTH
    model, examples = big_catalogue_model(), random_examples(ROWS)
    histories = [History(row.tolist(), np.cumsum(gaps).tolist()) for row, gaps in zip(examples.items, examples.gaps)]
    now = [h.timestamps[-1] + 1.0 for h in histories]
    blocks = Recommender(model, cfg, [None, *range(1, ITEMS + 1)], chunk=CHUNK)
    with LargestNewTensor() as probe:
        got = blocks.recommend(histories, now, k=20, exclude_seen=True)
    assert probe.numel <= BOUND
    whole = Recommender(model, cfg, [None, *range(1, ITEMS + 1)])
    with LargestNewTensor() as probe:
        assert whole.recommend(histories, now, k=20, exclude_seen=True) == got
    assert probe.numel >= ROWS * ITEMS
