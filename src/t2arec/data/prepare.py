"""Turn a raw ``Interactions`` log into ``SequenceData``: sort, k-core filter, dense ids.

The protocol (spec, "Data and evaluation protocol"): sort each user's interactions by time, stable
for ties; keep only users and items with >= ``min_count`` interactions, filtering repeatedly until
both hold; remap items to 1..n (0 is padding) and users to 0..m-1 in raw-id order.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from t2arec.data.types import DatasetReport, DataError, Interactions, RawId, SequenceData, encode_ids

# Leave-one-out needs a training prefix, a validation target and a test target.
MIN_SEQUENCE_LENGTH = 3
BLOCK = 1 << 22  # rows per block for per-row NumPy work (4M rows: tens of MB of temporaries)


def prepare(interactions: Interactions, name: str, min_count: int = 10) -> SequenceData:
    """Sort, filter to the ``min_count``-core and remap ids.

    Returns ``SequenceData`` with ``items[u]`` int64 (len_u,) in 1..num_items and ``times[u]``
    float64 (len_u,) seconds, time-ordered with file order breaking ties.
    Raises ``DataError`` when nothing survives the filter or a user keeps < 3 interactions.
    Works on the integer codes throughout (NumPy, a block of rows at a time where a temporary
    would be as long as the log), so memory stays a small multiple of the prepared arrays.
    """
    if min_count < 0:
        raise DataError(f"min_count must be >= 0, got {min_count}")
    codes = interactions.codes
    user = codes["user"].to_numpy()  # (n,) uint32 codes, file order
    item = codes["item"].to_numpy()
    time = codes["time"].to_numpy()  # (n,) float64 seconds
    keep = core_mask(user, item, min_count, len(interactions.user_ids), len(interactions.item_ids))
    kept = int(keep.sum())
    if kept == 0:
        raise DataError(f"{interactions.source}: no interactions left after keeping users and "
                        f"items with >= {min_count} interactions (min_count={min_count})")
    user_counts = _counts(user, keep, len(interactions.user_ids))
    item_counts = _counts(item, keep, len(interactions.item_ids))
    _check_lengths(user, keep, user_counts, interactions.user_ids, interactions.source, min_count)

    user_ids, user_index = _vocabulary(interactions.user_ids, user_counts > 0, start=0)
    item_ids, item_index = _vocabulary(interactions.item_ids, item_counts > 0, start=1)
    order = _user_time_order(user, time, keep, user_index)
    items = item_index[_take(item, order)]
    times = _take(time, order)
    del order
    ends = np.cumsum(_lengths(user_counts, user_index, len(user_ids))).tolist()

    dropped = dict(interactions.dropped)
    dropped["k_core_filter"] = dropped.get("k_core_filter", 0) + (len(user) - kept)
    report = DatasetReport(
        name=name, source=interactions.source, time_unit=interactions.time_unit,
        rows_read=interactions.rows_read, users=len(user_ids), items=len(item_ids),
        interactions=kept, dropped=dropped)
    # Views into two arrays, not copies: memory is the prepared arrays once.
    starts = [0, *ends[:-1]]
    return SequenceData(items=[items[a:b] for a, b in zip(starts, ends)],
                        times=[times[a:b] for a, b in zip(starts, ends)],
                        item_ids=[None, *item_ids], user_ids=user_ids, report=report)


def k_core(frame: pl.DataFrame, min_count: int) -> tuple[pl.DataFrame, int]:
    """Repeatedly drop rows of users/items with < ``min_count`` rows until both counts hold.

    ``frame`` has ``user`` and ``item`` columns (raw ids or codes). Returns (kept rows in input
    order, rows removed). See ``core_mask``.
    """
    user, _ = encode_ids(frame["user"])
    item, _ = encode_ids(frame["item"])
    keep = core_mask(user.to_numpy(), item.to_numpy(), min_count)
    return frame.filter(pl.Series(keep)), int(frame.height - keep.sum())


def core_mask(user: np.ndarray, item: np.ndarray, min_count: int, num_users: int | None = None,
              num_items: int | None = None) -> np.ndarray:
    """Rows (n,) bool of the ``min_count``-core of a log given as user and item codes (n,).

    Each pass counts users and items on the rows still kept and drops both kinds at once (as
    RecBole does), until a pass drops nothing; the fixed point does not depend on the order, since
    it is the largest row set in which every user and item has >= ``min_count`` rows.
    """
    num_users = int(user.max()) + 1 if num_users is None and len(user) else (num_users or 0)
    num_items = int(item.max()) + 1 if num_items is None and len(item) else (num_items or 0)
    keep = np.ones(len(user), dtype=bool)
    while True:
        good_user = _counts(user, keep, num_users) >= min_count
        good_item = _counts(item, keep, num_items) >= min_count
        changed = False
        for block in _blocks(len(user)):
            still = keep[block] & good_user[user[block]] & good_item[item[block]]
            changed = changed or bool((still != keep[block]).any())
            keep[block] = still
        if not changed:
            return keep


def _blocks(n: int) -> list[slice]:
    """Slices of ``BLOCK`` rows covering 0..n: per-row temporaries stay small."""
    return [slice(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` a block at a time: NumPy would first copy a whole int32 ``index`` to intp."""
    out = np.empty(len(index), dtype=values.dtype)
    for block in _blocks(len(index)):
        out[block] = values[index[block]]
    return out


def _counts(codes: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    """Rows per code (size,) int64 among the kept rows."""
    counts = np.zeros(size, dtype=np.int64)
    for block in _blocks(len(codes)):
        counts += np.bincount(codes[block][keep[block]], minlength=size)
    return counts


def _check_lengths(user: np.ndarray, keep: np.ndarray, counts: np.ndarray, user_ids: pl.Series,
                   source: str, min_count: int) -> None:
    short = (counts > 0) & (counts < MIN_SEQUENCE_LENGTH)
    if short.any():
        first = _first_kept(user, keep, short)  # the example: the short user the file shows first
        raise DataError(f"{source}: {int(short.sum())} user(s) have fewer than {MIN_SEQUENCE_LENGTH} "
                        f"interactions after filtering with min_count={min_count} (e.g. user "
                        f"{user_ids[first]!r} has {int(counts[first])}); leave-one-out needs >= 3, "
                        "use min_count >= 3")


def _first_kept(user: np.ndarray, keep: np.ndarray, chosen: np.ndarray) -> int:
    """The code of the first kept row whose user is ``chosen`` (bool per code); one must exist."""
    for block in _blocks(len(user)):
        hits = user[block][keep[block] & chosen[user[block]]]
        if len(hits):
            return int(hits[0])
    raise ValueError("no kept row has a chosen user")


def _vocabulary(ids: pl.Series, present: np.ndarray, start: int) -> tuple[list[RawId], np.ndarray]:
    """Sorted distinct raw ids among the codes ``present`` (bool per code) and the dense index of
    each code (``start``, ``start``+1, ...; -1 for codes not present), as an int64 array.

    Ids are treated as integers (sorted numerically, returned as int) only when every id is the
    canonical text of an int64 ("7", "-3"; not "007" or "+7"), so two distinct strings can never
    collapse onto the same int.
    """
    codes = np.flatnonzero(present)
    distinct = ids.gather(codes)
    as_int = distinct.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and bool((as_int.cast(pl.String) == distinct).all()):
        order = np.argsort(as_int.to_numpy(), kind="stable")  # distinct ints: a plain numeric order
        sorted_ids: list[RawId] = as_int.gather(order).to_list()
    else:
        texts = distinct.to_list()
        order = np.asarray(sorted(range(len(texts)), key=texts.__getitem__), dtype=np.int64)  # code point order
        sorted_ids = [texts[j] for j in order]
    index = np.full(len(ids), -1, dtype=np.int64)
    index[codes[order]] = start + np.arange(len(codes))
    return sorted_ids, index


def _user_time_order(user: np.ndarray, time: np.ndarray, keep: np.ndarray, user_index: np.ndarray
                     ) -> np.ndarray:
    """Indices of the kept rows ordered by (dense user, time), file order breaking ties.

    A least-significant-digit radix sort on 16-bit digits (time's first, then the user's), each
    a stable ``np.argsort`` of uint16, which NumPy does by counting in linear time. ``np.lexsort``
    gives the same order, more slowly (3.5-4.4 s against 2.8 s on the 8.3M kept rows of
    ``benchmarks/scale.py``'s 1e7 log) and with full-length int64 keys and indices. Digits are
    taken a block at a time in the current order, so no full-length key is ever held.
    """
    rows = np.flatnonzero(keep).astype(_index_dtype(len(user)))
    dense = np.empty(len(rows), dtype=np.uint32)
    for block in _blocks(len(rows)):
        dense[block] = user_index[user[rows[block]]]
    order = np.arange(len(rows), dtype=rows.dtype)  # positions into ``rows``, sorted so far

    def time_key(at: np.ndarray) -> np.ndarray:
        return _time_key(time[rows[at]])

    def user_key(at: np.ndarray) -> np.ndarray:
        return dense[at]

    for key, low, high in ((time_key, *_time_range(time, keep)), (user_key, 0, int(user_index.max()))):
        for shift in range(0, 64, 16):
            if low >> shift == high >> shift:
                break  # every key has the same bits from here up
            digit = np.empty(len(rows), dtype=np.uint16)
            for block in _blocks(len(rows)):
                values = key(order[block])
                digit[block] = (values >> values.dtype.type(shift)) & values.dtype.type(0xFFFF)
            if digit.min() == digit.max():
                continue  # all equal: this digit would not move anything
            step = np.argsort(digit, kind="stable")
            del digit
            order = order[step]
            del step
    return _take(rows, order)


def _time_range(time: np.ndarray, keep: np.ndarray) -> tuple[int, int]:
    """The smallest and largest sort key (``_time_key``) among the kept rows."""
    low, high = np.inf, -np.inf
    for block in _blocks(len(time)):
        kept = time[block][keep[block]]
        if len(kept):
            low, high = min(low, float(kept.min())), max(high, float(kept.max()))
    keys = _time_key(np.array([low, high], dtype=np.float64))
    return int(keys[0]), int(keys[1])


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def _time_key(seconds: np.ndarray) -> np.ndarray:
    """Unsigned keys (n,) uint64 in the order of the float64 ``seconds`` (finite; -0.0 == 0.0).

    IEEE 754 bits order like integers once the sign bit of positives is set and every bit of
    negatives flipped. Works in place on ``seconds`` (a fresh copy).
    """
    seconds += 0.0  # -0.0 -> 0.0: the two compare equal, and ties must keep file order
    key = seconds.view(np.uint64)
    negative = (key >> np.uint64(63)).astype(bool)
    np.invert(key, out=key, where=negative)
    np.bitwise_or(key, np.uint64(1 << 63), out=key, where=~negative)
    return key


def _lengths(counts: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """Sequence length (size,) of each dense user from ``counts`` per code and the code -> dense map."""
    lengths = np.zeros(size, dtype=np.int64)
    present = index >= 0
    lengths[index[present]] = counts[present]
    return lengths


def dataset_summary(data: SequenceData) -> str:
    """A few human-readable lines about where the data came from and what was kept."""
    return data.report.summary()
