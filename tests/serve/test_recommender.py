"""The Recommender: equal to the offline evaluator, validation, unknown ids, ranking rules."""
import numpy as np
import pytest
import torch

from t2arec.checkpoint import load_checkpoint
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import evaluate
from t2arec.pipeline import run
from t2arec.serve import History, Recommender, RequestError
from t2arec.serve.recommender import state_digest, top_k
from tests.serve.conftest import TINY
from tests.serve.helpers import split_histories


def stable_top(scores, k):
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


@pytest.mark.parametrize("scope", ["batch", "request"])
@pytest.mark.parametrize("align", [True, False])
def test_results_equal_the_evaluators_batch_by_batch(checkpoint, data, align, scope):
    """Same test-split inputs, same batches (align.batch_size): identical scores and top-k, bit for bit.
    In request scope every user is its own request, as in the evaluator."""
    from t2arec.align import score_batch_scoped

    recommender = Recommender.load(checkpoint, scope=scope)
    examples = evaluation_examples(data, "test", recommender.max_len)
    histories, now = split_histories(recommender, data)
    size = recommender.config.align.batch_size
    assert len(histories) > size  # more than one batch, so the batch boundaries are exercised
    cfg = recommender.config.align if align else None
    assert recommender.aligns and recommender.config.align.lr == 1.0
    k = recommender.num_items  # the full ranking
    ranks = []
    for start in range(0, len(histories), size):
        part = histories[start:start + size]
        recs = recommender.recommend(part, now[start:start + size], k=k, align=align, requests=range(len(part)))
        batch = examples.batch(slice(start, start + size))
        scores, _ = score_batch_scoped(recommender.model, batch, cfg)
        order = stable_top(scores, k)
        for row, rec in enumerate(recs):
            assert rec.items == [recommender.item_ids[i + 1] for i in order[row].tolist()]
            assert rec.scores == scores[row, order[row]].tolist()
            assert rec.skipped == 0
            # the evaluator's pessimistic rank of the target, read off the recommendation
            target_score = rec.scores[rec.items.index(recommender.item_ids[int(batch.targets[row])])]
            ranks.append(sum(s >= target_score for s in rec.scores) - 1)
    # so the evaluator's metrics follow from what the API returns
    assert np.array_equal(evaluate(recommender.model, examples, cfg, batch_size=size).ranks, ranks)

def test_alignment_restores_the_checkpoint_parameters_bit_for_bit(recommender, data, checkpoint):
    before = recommender.parameter_digest()
    assert before == state_digest(load_checkpoint(checkpoint)["state_dict"])
    histories, now = split_histories(recommender, data, range(10))
    aligned = recommender.recommend(histories, now, k=5)
    plain = recommender.recommend(histories, now, k=5, align=False)
    assert recommender.parameter_digest() == before
    assert [r.scores for r in aligned] != [r.scores for r in plain]  # alignment did change the scores
    assert recommender.recommend(histories, now, k=5) == aligned  # deterministic


def test_in_batch_scope_aligned_results_depend_on_the_batch_unaligned_ones_do_not(checkpoint, data):
    recommender = Recommender.load(checkpoint, scope="batch")
    histories, now = split_histories(recommender, data, range(6))
    alone = recommender.recommend(histories[:1], now[:1], align=False)[0]
    together = recommender.recommend(histories, now, align=False)[0]
    assert alone.items == together.items  # scores equal up to float summation order
    np.testing.assert_allclose(alone.scores, together.scores, rtol=1e-5, atol=1e-6)
    aligned_alone = recommender.recommend(histories[:1], now[:1])[0]
    aligned_together = recommender.recommend(histories, now)[0]
    assert aligned_alone.scores != aligned_together.scores  # one alignment step per batch


def test_in_request_scope_a_request_gets_the_same_answer_alone_and_among_others(recommender, data):
    """The serving default: every request its own step, so who else is scored at the same time
    changes nothing (same top-k, same scores bit for bit), with one or two threads."""
    assert recommender.scope == "request"
    histories, now = split_histories(recommender, data, range(12))
    requests = [0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8]  # single users and bodies of several users
    previous = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            together = recommender.recommend(histories, now, k=10, requests=requests)
            for label in set(requests):
                rows = [i for i, r in enumerate(requests) if r == label]
                alone = recommender.recommend([histories[i] for i in rows], [now[i] for i in rows], k=10)
                assert alone == [together[i] for i in rows], (threads, label)
        finally:
            torch.set_num_threads(previous)
    merged = recommender.recommend(histories, now, k=10)  # all twelve one request: a shared step
    assert merged != together
    plain = recommender.recommend(histories, now, k=10, align=False)
    assert plain != together


def test_inputs_are_the_evaluators_arrays(recommender, data):
    """Windowing, float64 gaps, 0 for the window's first item, next gap and left padding."""
    examples = evaluation_examples(data, "test", recommender.max_len)
    histories, now = split_histories(recommender, data, range(5))
    batch = recommender.batch(recommender.encode(histories, now))
    ref = examples.batch(slice(0, 5))
    for got, want in ((batch.items, ref.items), (batch.gaps, ref.gaps), (batch.next_gap, ref.next_gap)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_short_history_is_left_padded(recommender):
    ids = recommender.item_ids
    batch = recommender.batch(recommender.encode([History([ids[3], ids[1]], [100.0, 160.5])], [200.0]))
    assert batch.items[0, -3:].tolist() == [0, 3, 1] and batch.items[0, :-2].eq(0).all()
    assert batch.gaps[0, -2:].tolist() == [0.0, 60.5] and batch.next_gap.tolist() == [39.5]


def test_exclude_seen_k_and_deterministic_ties(recommender):
    ids = recommender.item_ids
    history = History([ids[1], ids[2], ids[2], ids[5]], [0.0, 10.0, 20.0, 30.0])
    full = recommender.recommend([history], [40.0], k=recommender.num_items, align=False)[0]
    assert sorted(full.items) == sorted(ids[1:])
    assert full.scores == sorted(full.scores, reverse=True)
    excluded = recommender.recommend([history], [40.0], k=recommender.num_items, align=False, exclude_seen=True)[0]
    assert len(excluded.items) == recommender.num_items - 3
    assert not {ids[1], ids[2], ids[5]} & set(excluded.items)
    assert excluded.items == [i for i in full.items if i not in (ids[1], ids[2], ids[5])]
    top3 = recommender.recommend([history], [40.0], k=3, align=False)[0]
    assert top3.items == full.items[:3] and None not in full.items
    assert len(recommender.recommend([history], [40.0], k=10_000, align=False)[0].items) == recommender.num_items
    # per-user k and exclude_seen in one call
    both = recommender.recommend([history, history], [40.0, 40.0], k=[2, 4], align=False, exclude_seen=[False, True])
    assert both[0].items == full.items[:2] and both[1].items == excluded.items[:4]


def test_top_k_breaks_ties_by_item_index_and_never_returns_excluded_items():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]])
    top = top_k(scores, [4, 3], [None, np.array([2, 3])])
    assert top[0][0] == [2, 4, 1, 3] and top[0][1] == scores[0, [1, 3, 0, 2]].tolist()
    assert top[1] == ([1, 4, 5], [1.0, 1.0, 1.0])
    assert top_k(scores[:1], [10], [np.array([1, 2, 3, 4, 5])]) == [([], [])]


@pytest.mark.parametrize("chunk", [1, 7, -1])  # -1: all items but the last in the first block
def test_recommendations_by_blocks_of_items_equal_the_whole_catalogues(recommender, data, chunk):
    """A running top-k over blocks of ``chunk`` items: the same items in the same order, with and
    without the step (scored inside it), per-user k and exclude_seen.

    The scores are equal up to rounding: on blocks this narrow MKL takes other kernels than for the
    whole catalogue (for blocks of a thousand items or more they are equal bit for bit, docs/scaling.md).
    """
    chunk = chunk if chunk > 0 else recommender.num_items - 1
    blocks = Recommender(recommender.model, recommender.config, recommender.item_ids, chunk=chunk)
    histories, now = split_histories(recommender, data, range(12))
    ks, exclude = [1, 5, 10, recommender.num_items] * 3, [False, True, True] * 4
    for align in (True, False):
        want = recommender.recommend(histories, now, k=ks, align=align, exclude_seen=exclude)
        got = blocks.recommend(histories, now, k=ks, align=align, exclude_seen=exclude)
        assert [g.items for g in got] == [w.items for w in want]
        assert [g.skipped for g in got] == [w.skipped for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.scores, w.scores, rtol=1e-6, atol=1e-7)
        assert any(len(g.items) == recommender.num_items for g in got)  # full rankings were compared


def test_non_finite_scores_are_refused_block_by_block(recommender, data):
    import copy

    from t2arec.serve.recommender import NonFiniteScores

    model = copy.deepcopy(recommender.model)
    with torch.no_grad():
        model.item_table().weight[-1] = float("nan")  # the last item: in the last block only
    broken = Recommender(model, recommender.config, recommender.item_ids, chunk=7)
    histories, now = split_histories(recommender, data, range(3))
    before = broken.parameter_digest()
    for align in (True, False):
        with pytest.raises(NonFiniteScores):
            broken.recommend(histories, now, k=3, align=align)
        assert broken.parameter_digest() == before  # the step was undone on the way out


def test_unknown_ids_are_skipped_and_counted_or_an_error_when_strict(recommender):
    ids = recommender.item_ids
    clean = recommender.recommend([History([ids[1], ids[2]], [0.0, 10.0])], [20.0], align=False)[0]
    noisy = History([ids[1], "no-such-item", ids[2], 10**30], [0.0, 5.0, 10.0, 15.0])
    got = recommender.recommend([noisy], [20.0], align=False)[0]
    assert got.skipped == 2
    # the unknown interactions are left out with their timestamps; next gap from the last known one
    assert got.items == clean.items and got.scores == clean.scores
    with pytest.raises(RequestError, match=r"users\[0\]\.items\[1\]: unknown item id 'no-such-item'"):
        recommender.recommend([noisy], [20.0], strict=True)
    with pytest.raises(RequestError, match=r"users\[1\]\.items: none of the 2 item ids"):
        recommender.recommend([History([ids[1]], [0.0]), History(["x", "y"], [0.0, 1.0])], [1.0, 2.0])


def test_int_and_str_spellings_find_the_same_item(recommender, checkpoint):
    assert recommender.integer_ids and all(isinstance(i, int) for i in recommender.item_ids[1:])
    first = recommender.item_ids[1]
    assert recommender.lookup(first) == recommender.lookup(str(first)) == 1
    assert recommender.lookup(np.int64(first)) == 1
    for spelling in (f"0{first}", f"+{first}", f" {first}", float(first), True):
        assert recommender.lookup(spelling) == 0
    as_int = recommender.recommend([History([first], [0.0])], [1.0], align=False)[0]
    as_str = recommender.recommend([History([str(first)], [0.0])], [1.0], align=False)[0]
    assert as_int == as_str and all(isinstance(i, int) for i in as_int.items)
    # a string vocabulary: ints are looked up by their text, outputs stay strings
    strings = Recommender(recommender.model, recommender.config, [None] + [f"{i}" if i % 2 else f"m{i}"
                                                                         for i in recommender.item_ids[1:]])
    assert not strings.integer_ids
    odd = next(i for i in recommender.item_ids[1:] if i % 2)
    assert strings.lookup(odd) == strings.lookup(str(odd)) > 0
    out = strings.recommend([History([odd, "m2"], [0.0, 1.0])], [2.0], align=False)[0]
    assert out.skipped == 0 and all(isinstance(i, str) for i in out.items)


BAD = [
    (History([], []), 1.0, r"users\[0\]\.items: the history is empty"),
    (History([1, 2], [0.0]), 1.0, r"users\[0\]\.timestamps: has 1 value\(s\) but items has 2"),
    (History([1, 2], [5.0, 4.0]), 6.0, r"users\[0\]\.timestamps\[1\]: 4 is before the previous timestamp 5"),
    (History([1, 2], [4.0, 5.0]), 3.0, r"users\[0\]\.now: 3 is before the last interaction at 5"),
    (History([1, 2], [4.0, float("nan")]), 6.0, r"users\[0\]\.timestamps\[1\]: must be a finite number"),
    (History([1], [4.0]), float("inf"), r"users\[0\]\.now: must be a finite number"),
    (History([1], [4.0]), "5", r"users\[0\]\.now: expected a number, got str"),
    (History([1], [True]), 5.0, r"users\[0\]\.timestamps\[0\]: expected a number, got bool"),
    (History([1.0], [4.0]), 5.0, r"users\[0\]\.items\[0\]: expected an int or str item id, got float"),
    (History("12", [4.0, 5.0]), 6.0, r"users\[0\]\.items: expected a list, got str"),
    (History([1], [1.7e12]), 1.8e12, r"users\[0\]\.timestamps\[0\]: 1.7e\+12 is out of range"),
]


@pytest.mark.parametrize("history,now,message", BAD)
def test_bad_inputs_name_the_user_and_field(recommender, history, now, message):
    good = History([recommender.item_ids[1]], [0.0])
    with pytest.raises(RequestError, match=message.replace("users\\[0\\]", "users\\[1\\]")) as err:
        recommender.recommend([good, history], [1.0, now])
    assert err.value.user == 1


def test_request_level_errors(recommender):
    with pytest.raises(RequestError, match="users: give at least one history"):
        recommender.recommend([], [])
    with pytest.raises(RequestError, match="now: has 2 values for 1 histories"):
        recommender.recommend([History([1], [0.0])], [1.0, 2.0])
    with pytest.raises(ValueError, match="k must be >= 1"):
        recommender.recommend([History([1], [0.0])], [1.0], k=0)
    assert recommender.recommend([([1, 2], [0.0, 1.0])], [2.0], align=False)[0].items  # a plain pair works too


def test_a_checkpoint_request_scope_cannot_align_is_refused_at_load(tmp_path):
    """Two stacked T2ARec layers have no per-request step: loading for serving (request scope by
    default) fails at once with the way out, instead of on the first aligned request."""
    cfg = RunConfig()
    apply_overrides(cfg, [*TINY, "model.num_layers=2"])
    run(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"not 2; use align.scope=batch \(--align-scope batch\), or serve it "
                                         r"without alignment \(--no-align\)"):
        Recommender.load(tmp_path / "checkpoint")
    assert Recommender.load(tmp_path / "checkpoint", scope="batch").scope == "batch"
    assert Recommender.load(tmp_path / "checkpoint", align=False).scope == "request"
