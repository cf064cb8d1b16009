"""Every item's score for a batch, a block of items at a time, so that ranking (``evaluate``) and
top-k (``recommend``, ``serve``) never hold the whole (B, num_items) matrix: memory is bounded for
any catalogue (issue 11, "catalogues of millions").

A block is the (B, chunk) slice of the scores of items start + 1..stop. ``chunk_size`` picks as
many items as fit ``max_block`` float32 values (256 MiB by default), so for the catalogues and
batch sizes of the experiments (N * B <= 2^26) there is one block: exactly today's single product.
The top-k here keeps a running best ``k`` per row across the blocks; the ranks by blocks are in
``t2arec.evaluate.item_ranks``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from t2arec.models.base import MIN_ROWS, ItemTable, SeqBatch, SequentialRecommender

DEFAULT_MAX_BLOCK = 2**26  # float32 scores per block: 256 MiB
# scores compared and counted at a time inside a block: torch sums a boolean tensor by first
# converting it to the sum's type (int64 unless told: twice the block's bytes), so counts are taken
# over row slices, in int32 (a block's count fits; summing into int32 is also 2-4x faster here)
COUNT_VALUES = 2**22


class NonFiniteScores(ValueError):
    """The model produced NaN or infinite scores for a batch (extreme inputs)."""


class ItemScores:
    """The (rows, num_items) scores of one batch, produced a block of items at a time."""

    rows: int
    num_items: int
    device: torch.device
    dtype: torch.dtype

    def block(self, start: int, stop: int) -> Tensor:
        """(rows, stop - start) scores of items start + 1..stop. The caller must not modify it."""
        raise NotImplementedError

    def columns(self, items: Tensor) -> Tensor:
        """(rows, U) scores of the 0-based item indices ``items`` (U,)."""
        raise NotImplementedError


class DenseScores(ItemScores):
    """Scores the model computed all at once (a model that only defines ``score``)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values  # (B, N)
        self.rows, self.num_items = values.shape
        self.device, self.dtype = values.device, values.dtype

    def block(self, start: int, stop: int) -> Tensor:
        return self.values[:, start:stop]

    def columns(self, items: Tensor) -> Tensor:
        return self.values.index_select(1, items)


class TableScores(ItemScores):
    """query . table, computed per block on demand: only one (B, chunk) block exists at a time."""

    def __init__(self, query: Tensor, table: ItemTable) -> None:
        self.query, self.table = query, table  # (B, d), (N, d)
        self.rows, self.num_items = query.shape[0], table.num_items
        self.device, self.dtype = query.device, query.dtype

    def block(self, start: int, stop: int) -> Tensor:
        return self.table.scores(self.query, start, stop)

    def columns(self, items: Tensor) -> Tensor:
        return self.table.columns(self.query, items)


class CorrectedScores(ItemScores):
    """query . table plus a sparse correction: (row, item) -> value added to that one score.

    Per-request test-time alignment (``t2arec.align.use_scores_by_request``) changes, for each row, the
    item-table rows of the items its own request read; the rest of the table is the trained one. So
    its scores are the trained product plus q . dE on those few items, without a per-row table.
    A row's values do not depend on the other rows: the product is made at least ``MIN_ROWS`` rows
    (``models.base``).

    query: (B, d); rows, items, values: (M,) row index, 0-based item index, value to add (each
    (row, item) pair at most once).
    """

    def __init__(self, query: Tensor, table: ItemTable, rows: Tensor, items: Tensor, values: Tensor) -> None:
        self.query, self.table = query, table
        self.rows, self.num_items = query.shape[0], table.num_items
        self.device, self.dtype = query.device, query.dtype
        order = torch.argsort(items, stable=True)  # by item, so that a block's entries are one slice
        self.fix_rows, self.fix_items, self.fix_values = rows[order], items[order], values[order].to(query.dtype)

    def block(self, start: int, stop: int) -> Tensor:
        out = self.table.scores(self.query, start, stop, min_rows=MIN_ROWS)
        lo, hi = torch.searchsorted(self.fix_items, torch.tensor([start, stop], device=self.device)).tolist()
        if hi > lo:
            out.index_put_((self.fix_rows[lo:hi], self.fix_items[lo:hi] - start), self.fix_values[lo:hi],
                           accumulate=True)
        return out

    def columns(self, items: Tensor) -> Tensor:
        out = self.table.columns(self.query, items, min_rows=MIN_ROWS)
        if not len(self.fix_items) or not len(items):
            return out
        # every column that shows an item with a correction gets it (``items`` may repeat an item)
        order = torch.argsort(items, stable=True)
        sorted_items = items[order]
        lo = torch.searchsorted(sorted_items, self.fix_items)
        hi = torch.searchsorted(sorted_items, self.fix_items, right=True)
        count = hi - lo
        if not bool((count > 0).any()):
            return out
        entry = torch.repeat_interleave(torch.arange(len(count), device=self.device), count)
        offset = torch.arange(len(entry), device=self.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        columns = order[lo[entry] + offset]
        out.index_put_((self.fix_rows[entry], columns), self.fix_values[entry], accumulate=True)
        return out


def item_scores(model: SequentialRecommender, batch: SeqBatch) -> ItemScores:
    """The batch's scores, by blocks of the item table when the model declares ``scores_by_table``,
    else its dense ``score`` (no bound on memory then: the model materialises them itself)."""
    if model.scores_by_table:
        return TableScores(model.query(batch), model.item_table())
    return DenseScores(model.score(batch))


def chunk_size(rows: int, num_items: int, chunk: int | None = None, max_block: int = DEFAULT_MAX_BLOCK) -> int:
    """Items per block: ``chunk`` when given, else as many as keep rows * chunk <= ``max_block``
    (at least 1, at most ``num_items``)."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    size = chunk if chunk is not None else max_block // max(rows, 1)
    return max(1, min(size, num_items))


def item_chunks(num_items: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive blocks of ``size`` items covering 0..num_items."""
    for start in range(0, num_items, size):
        yield start, min(start + size, num_items)


def row_slices(rows: int, columns: int) -> Iterator[slice]:
    """Consecutive row ranges of a (rows, columns) block, each of at most ``COUNT_VALUES`` values
    (at least one row)."""
    step = max(1, COUNT_VALUES // max(columns, 1))
    for start in range(0, rows, step):
        yield slice(start, start + step)


def count_rows(mask: Tensor) -> Tensor:
    """(B,) int64 number of True values in each row of ``mask`` (B, n), a row slice at a time."""
    return torch.cat([mask[part].sum(dim=1, dtype=torch.int32) for part in row_slices(*mask.shape)]).long()


# --- top-k -------------------------------------------------------------------------------------------
def _order_key(values: Tensor) -> Tensor:
    """Values as they are ordered: NaN counts as +inf (torch.sort puts NaN first when descending;
    either way such items rank above every finite one and are never returned)."""
    return torch.where(values.isnan(), math.inf, values) if bool(values.isnan().any()) else values


def stable_top(values: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The ``width`` best columns of each row of ``values`` (B, n), best first, equal values in column
    order: the first ``width`` of a stable descending sort, without sorting all n columns.

    Returns (their values (B, width), their columns (B, width)).
    """
    key = _order_key(values)
    kth = key.topk(width, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # the width-th best
    take = key >= kth
    crowded = count_rows(take) > width  # values tied with the width-th best: keep the first columns
    if bool(crowded.any()):
        sub = key[crowded]
        tied = sub == kth[crowded]
        room = width - (sub > kth[crowded]).sum(dim=1, keepdim=True)
        take[crowded] = (sub > kth[crowded]) | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= room))
    columns = take.nonzero()[:, 1].view(-1, width)  # row-major: each row's columns ascending
    order = torch.sort(key.gather(1, columns), dim=1, descending=True, stable=True).indices
    columns = columns.gather(1, order)
    return values.gather(1, columns), columns


def _merge(best: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], width: int) -> tuple[Tensor, Tensor]:
    """The ``width`` best of two candidate lists (values, items), each best first. ``best`` holds
    only smaller item indices than ``new``, so a stable sort of best + new keeps ties in index order."""
    values, items = torch.cat([best[0], new[0]], dim=1), torch.cat([best[1], new[1]], dim=1)
    order = torch.sort(_order_key(values), dim=1, descending=True, stable=True).indices[:, :width]
    return values.gather(1, order), items.gather(1, order)


def _exclusions(exclude: Sequence[np.ndarray | None], device: torch.device) -> tuple[Tensor, Tensor]:
    """(rows, 0-based items) of every excluded (row, item) pair."""
    rows = [np.full(len(items), row) for row, items in enumerate(exclude) if items is not None and len(items)]
    items = [np.asarray(items, dtype=np.int64) - 1 for items in exclude if items is not None and len(items)]
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    return (torch.as_tensor(np.concatenate(rows), dtype=torch.int64, device=device),
            torch.as_tensor(np.concatenate(items), dtype=torch.int64, device=device))


def top_k(scores: ItemScores, ks: Sequence[int], exclude: Sequence[np.ndarray | None], chunk: int | None = None,
          require_finite: bool = False) -> list[tuple[list[int], list[float]]]:
    """Per row, the ``ks[row]`` best item indices (1-based) and their scores, best first.

    Equal scores keep item-index order, so the result equals the first ``ks[row]`` of a stable
    descending sort of the whole row (the dense ``top_k`` of ``t2arec.serve.recommender`` before
    blocks), whatever ``chunk`` is. Items in ``exclude[row]`` (1-based) are never returned, and
    neither are non-finite scores. With ``require_finite`` a NaN or infinite score anywhere in the
    batch raises ``NonFiniteScores`` (checked block by block, before any exclusion).
    """
    num_items = scores.num_items
    width = min(max(int(k) for k in ks), num_items)
    size = chunk_size(scores.rows, num_items, chunk)
    device = scores.device
    excluded_rows, excluded_items = _exclusions(exclude, device)
    best: tuple[Tensor, Tensor] | None = None
    for start, stop in item_chunks(num_items, size):
        block = scores.block(start, stop)
        if require_finite and not bool(torch.isfinite(block).all()):
            raise NonFiniteScores("the model produced non-finite scores for this batch")
        inside = (excluded_items >= start) & (excluded_items < stop)
        if bool(inside.any()):  # out of place: a dense block is a view of the caller's scores
            block = block.index_put((excluded_rows[inside], excluded_items[inside] - start),
                                    torch.tensor(-math.inf, dtype=block.dtype, device=device))
        values, columns = stable_top(block, min(width, stop - start))
        del block  # before the next block is made: one block at a time
        found = (values, columns + start)
        best = found if best is None else _merge(best, found, width)
    values, items = best[0].cpu(), best[1].cpu()
    out = []
    for row, k in enumerate(ks):
        keep = torch.isfinite(values[row, :k])  # an excluded item has -inf
        out.append(((items[row, :k][keep] + 1).tolist(), values[row, :k][keep].tolist()))
    return out
