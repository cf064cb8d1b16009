import math

import numpy as np
import pytest
import torch

from t2arec.align import AlignConfig, score_batch
from t2arec.data.batching import Examples
from t2arec.evaluate import evaluate, item_ranks, metrics_from_ranks, target_ranks, time_segments
from t2arec.models.base import ItemTable
from t2arec.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2arec.models.caser import Caser, CaserConfig
from t2arec.models.gru4rec import GRU4Rec, GRU4RecConfig
from t2arec.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from t2arec.models.sasrec import SASRec, SASRecConfig
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from t2arec.models.tim4rec import TiM4Rec, TiM4RecConfig
from t2arec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from t2arec.scoring import DenseScores, TableScores


def test_ranks_are_pessimistic_on_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2],   # target item 2 (score 0.5) tied with item 3
                           [0.9, 0.1, 0.3, 0.3],   # target item 1 is strictly best
                           [0.0, 0.0, 0.0, 0.0]])  # all tied: the target ranks last
    targets = torch.tensor([2, 1, 4])
    assert target_ranks(scores, targets).tolist() == [1, 0, 3]


def test_metrics_hand_computed():
    ranks = np.array([0, 1, 4, 9, 10, 50])
    m = metrics_from_ranks(ranks, ks=(5, 10))
    assert m["recall@5"] == pytest.approx(3 / 6)
    assert m["recall@10"] == pytest.approx(4 / 6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 6)
    ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert m["ndcg@10"] == pytest.approx(ndcg10)


def test_segments_split_by_target_time_into_equal_parts():
    times = np.array([50.0, 10.0, 40.0, 20.0, 30.0, 60.0, 70.0, 80.0])
    segs = time_segments(times, 4)
    assert [s.tolist() for s in segs] == [[1, 3], [2, 4], [0, 5], [6, 7]]


def test_nan_scores_never_help_the_target():
    nan = float("nan")
    scores = torch.tensor([[0.1, nan, 0.3, 0.2],   # target item 3 (0.3): the NaN item counts above it
                           [nan, nan, nan, nan],   # a diverged row: the target ranks last
                           [0.5, 0.1, nan, 0.2]])  # target item 1 (0.5)
    ranks = target_ranks(scores, torch.tensor([3, 2, 1]))
    assert ranks.tolist() == [1, 3, 1]
    # with NaN read as "no better than the target" the ranks would be [0, 0, 0] and every metric 1
    m = metrics_from_ranks(ranks.numpy(), ks=(1, 2, 10))
    assert m["recall@1"] == 0.0 and m["mrr@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["recall@2"] == pytest.approx(2 / 3) and m["mrr@2"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    assert m["ndcg@2"] == pytest.approx(2 / math.log2(3) / 3)
    assert m["recall@10"] == 1.0 and m["mrr@10"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 2) / 3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(3)) / 3)


# --- ranks by blocks of items: equal to the ranks of the whole score matrix ------------------------------
@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ties_and_nans(rows: int, items: int, seed: int) -> torch.Tensor:
    """Scores from four values (many ties with the target), NaNs here and there, one all-NaN row."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (rows, items), generator=g).float()
    scores[torch.rand(rows, items, generator=g) < 0.1] = float("nan")
    scores[0] = float("nan")
    return scores


@pytest.mark.parametrize("seed", range(5))
def test_ranks_by_blocks_equal_the_whole_matrix_ranks(seed, monkeypatch):
    if seed == 4:  # compare and count a row or two at a time, as a large block is counted
        monkeypatch.setattr("t2arec.scoring.COUNT_VALUES", 20)
    scores = ties_and_nans(12, 30, seed)
    targets = torch.randint(1, 31, (12,), generator=torch.Generator().manual_seed(seed))
    want = target_ranks(scores, targets)
    assert want[0] == 29 and (want < 29).any()  # a NaN target ranks last, the others do not all
    for chunk in (1, 7, 29, 30, 31, None):
        assert torch.equal(item_ranks(DenseScores(scores), targets, chunk), want), chunk


def test_the_documented_nan_and_tie_cases_by_blocks():
    nan = float("nan")
    scores = torch.tensor([[0.1, nan, 0.3, 0.2], [nan, nan, nan, nan], [0.5, 0.1, nan, 0.2], [0.5, 0.5, 0.5, 0.5]])
    for chunk in (1, 2, 3):
        assert item_ranks(DenseScores(scores), torch.tensor([3, 2, 1, 2]), chunk).tolist() == [1, 3, 1, 3]


@pytest.mark.parametrize("chunk", [1, 7, 300, 301])
def test_ranks_by_blocks_of_an_item_table_with_twins_a_bias_and_a_nan_item(chunk, one_thread):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 8, generator=g)
    weight[150:] = weight[:150]  # item 150 + j has item j's row and bias: a tie for every target
    weight[299] = float("nan")
    bias = torch.randn(300, generator=g)
    bias[150:] = bias[:150]
    query, targets = torch.randn(64, 8, generator=g), torch.randint(1, 301, (64,), generator=g)
    targets[:3] = torch.tensor([300, 1, 151])
    query[2] = query[1]  # the same user with either twin as the target
    table = ItemTable(weight, bias)
    want = target_ranks(table.scores(query), targets)
    assert want[0] == 299 and want[1] == want[2]  # the NaN item as a target, a pair of twins
    assert torch.equal(item_ranks(TableScores(query, table), targets, chunk), want)


def test_a_wrong_first_target_score_is_caught_and_the_rank_recounted(monkeypatch):
    """The first value of each target score is only a guess: off by one unit in the last place, the
    target would no longer count itself and every rank would come out one too small."""
    import t2arec.evaluate as ev

    first = ev._first_target_scores
    monkeypatch.setattr(ev, "_first_target_scores",
                        lambda scores, index, size: torch.nextafter(first(scores, index, size), torch.tensor(math.inf)))
    scores = ties_and_nans(12, 30, 0)
    scores[1:] = torch.nan_to_num(scores[1:], nan=0.5)
    targets = torch.arange(1, 13)
    assert torch.equal(item_ranks(DenseScores(scores), targets, 7), target_ranks(scores, targets))


N_ITEMS = 40
MODELS = {
    "t2arec": lambda: T2ARec(T2ARecConfig(num_items=N_ITEMS, hidden_size=8, state_size=4, chunk_size=4)),
    "sasrec": lambda: SASRec(SASRecConfig(num_items=N_ITEMS, max_len=6, hidden_size=16, inner_size=32)),
    "bert4rec": lambda: BERT4Rec(BERT4RecConfig(num_items=N_ITEMS, max_seq_length=6, hidden_size=16, inner_size=32)),
    "gru4rec": lambda: GRU4Rec(GRU4RecConfig(num_items=N_ITEMS, embedding_size=16, hidden_size=24)),
    "caser": lambda: Caser(CaserConfig(num_items=N_ITEMS, embedding_size=16, window=4, num_vertical=2,
                                       num_horizontal=3)),
    "mamba4rec": lambda: Mamba4Rec(Mamba4RecConfig(num_items=N_ITEMS, hidden_size=8, state_size=4, scan="chunked")),
    "tim4rec": lambda: TiM4Rec(TiM4RecConfig(num_items=N_ITEMS, hidden_size=8, state_size=4, head_dim=4,
                                             chunk_size=4)),
    "ttt4rec": lambda: TTT4Rec(TTT4RecConfig(num_items=N_ITEMS, hidden_size=16, intermediate_size=32)),
}


def model_with_ties(name: str):
    """A random model whose items 21..30 score exactly as items 1..10 (copied rows and bias) and
    whose item 40 scores NaN, so ties with the target and NaNs are on every row."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    assert model.scores_by_table
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))  # away from zero biases and unit norms
        table = model.item_table()
        table.weight[20:30] = table.weight[:10]
        table.weight[39] = float("nan")
        if table.bias is not None:
            table.bias[20:30] = table.bias[:10]
    return model


def tie_examples(count: int = 24, length: int = 6) -> Examples:
    """Inputs of items 1..30 (never the NaN item), targets mostly among the twins, one the NaN item;
    examples 0 and 1 are the same user with the twin targets 1 and 21."""
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 31, count)
    targets[:4] = [1, 21, 40, 7]
    items, gaps = rng.integers(1, 31, (count, length)), rng.exponential(3600.0, (count, length)).astype(np.float32)
    next_gap = rng.exponential(3600.0, count).astype(np.float32)
    items[1], gaps[1], next_gap[1] = items[0], gaps[0], next_gap[0]  # one user, either twin as the target
    return Examples(items, gaps, next_gap, targets, np.arange(count), np.zeros(count))


def whole_matrix_ranks(model, examples: Examples, align, batch_size: int) -> np.ndarray:
    """The evaluator before blocks: every batch's full score matrix, then ``target_ranks``."""
    ranks = []
    for start in range(0, len(examples), batch_size):
        batch = examples.batch(slice(start, start + batch_size))
        scores, _ = score_batch(model, batch, align)
        ranks.append(target_ranks(scores, batch.targets).numpy())
    return np.concatenate(ranks)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_ranks_the_same_by_blocks(name, one_thread):
    model, examples = model_with_ties(name), tie_examples()
    want = whole_matrix_ranks(model, examples, None, 10)
    assert want[0] == want[1] and want[2] == N_ITEMS - 1  # twins tie; the NaN target ranks last
    for chunk in (1, 7, N_ITEMS, N_ITEMS + 1, None):
        assert np.array_equal(evaluate(model, examples, batch_size=10, chunk=chunk).ranks, want), chunk


def test_blocks_are_scored_with_the_aligned_parameters(one_thread):
    """The step moves the item table too: blocks scored after the parameters were restored would
    give the unaligned ranks."""
    model, examples = model_with_ties("t2arec"), tie_examples()
    with torch.no_grad():
        model.item_embedding.weight[40] = 0.0  # no NaN here: the step would spread it to every score
    align = AlignConfig(lr=1.0, mu_time=1.0, mu_state=1.0)
    aligned = whole_matrix_ranks(model, examples, align, 10)
    assert not np.array_equal(aligned, whole_matrix_ranks(model, examples, None, 10))
    for chunk in (1, 7, None):
        result = evaluate(model, examples, align, batch_size=10, chunk=chunk)
        assert np.array_equal(result.ranks, aligned) and len(result.param_shift) == 3
