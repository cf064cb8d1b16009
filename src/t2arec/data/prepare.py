"""Turn a raw ``Interactions`` log into ``SequenceData``: sort, k-core filter, dense ids.

The protocol (spec, "Data and evaluation protocol"): sort each user's interactions by time, stable
for ties; keep only users and items with >= ``min_count`` interactions, filtering repeatedly until
both hold; remap items to 1..n (0 is padding) and users to 0..m-1 in raw-id order.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from t2arec.data.types import DatasetReport, DataError, Interactions, RawId, SequenceData

# Leave-one-out needs a training prefix, a validation target and a test target.
MIN_SEQUENCE_LENGTH = 3


def prepare(interactions: Interactions, name: str, min_count: int = 10) -> SequenceData:
    """Sort, filter to the ``min_count``-core and remap ids.

    Returns ``SequenceData`` with ``items[u]`` int64 (len_u,) in 1..num_items and ``times[u]``
    float64 (len_u,) seconds, time-ordered with file order breaking ties.
    Raises ``DataError`` when nothing survives the filter or a user keeps < 3 interactions.
    """
    if min_count < 0:
        raise DataError(f"min_count must be >= 0, got {min_count}")
    # The row index remembers file order, which is the tie-break for equal timestamps.
    frame = interactions.frame.select("user", "item", "time").with_row_index("row")
    kept, removed = k_core(frame, min_count)
    if kept.height == 0:
        raise DataError(f"{interactions.source}: no interactions left after keeping users and "
                        f"items with >= {min_count} interactions (min_count={min_count})")
    _check_lengths(kept, interactions.source, min_count)

    user_ids, user_index = _vocabulary(kept["user"], start=0)
    item_ids, item_index = _vocabulary(kept["item"], start=1)
    kept = kept.with_columns(
        pl.col("user").replace_strict(user_index, return_dtype=pl.Int64).alias("u"),
        pl.col("item").replace_strict(item_index, return_dtype=pl.Int64).alias("i"),
    ).sort(["u", "time", "row"])  # "row" makes the sort stable for ties by construction
    items, times = _split_by_user(kept, len(user_ids))

    dropped = dict(interactions.dropped)
    dropped["k_core_filter"] = dropped.get("k_core_filter", 0) + removed
    report = DatasetReport(
        name=name, source=interactions.source, time_unit=interactions.time_unit,
        rows_read=interactions.rows_read, users=len(user_ids), items=len(item_ids),
        interactions=kept.height, dropped=dropped)
    return SequenceData(items=items, times=times, item_ids=[None, *item_ids],
                        user_ids=user_ids, report=report)


def k_core(frame: pl.DataFrame, min_count: int) -> tuple[pl.DataFrame, int]:
    """Repeatedly drop rows of users/items with < ``min_count`` rows until both counts hold.

    Each pass counts users and items on the same frame and drops both kinds at once (as RecBole
    does); the fixed point does not depend on the order, since it is the largest row set in which
    every user and item has >= ``min_count`` rows. Returns (kept rows in input order, rows removed).
    """
    start = frame.height
    while True:
        keep = ((pl.len().over("user") >= min_count) & (pl.len().over("item") >= min_count))
        smaller = frame.filter(keep)
        if smaller.height == frame.height:
            break
        frame = smaller
    return frame, start - frame.height


def _check_lengths(kept: pl.DataFrame, source: str, min_count: int) -> None:
    lengths = kept.group_by("user", maintain_order=True).len()
    short = lengths.filter(pl.col("len") < MIN_SEQUENCE_LENGTH)
    if short.height:
        example = short.row(0)
        raise DataError(f"{source}: {short.height} user(s) have fewer than {MIN_SEQUENCE_LENGTH} "
                        f"interactions after filtering with min_count={min_count} (e.g. user "
                        f"{example[0]!r} has {example[1]}); leave-one-out needs >= 3, "
                        "use min_count >= 3")


def _vocabulary(raw: pl.Series, start: int) -> tuple[list[RawId], dict[str, int]]:
    """Sorted distinct raw ids and a map raw string -> dense index (``start``, ``start``+1, ...).

    Ids are treated as integers (sorted numerically, returned as int) only when every id is the
    canonical text of an int64 ("7", "-3"; not "007" or "+7"), so two distinct strings can never
    collapse onto the same int.
    """
    distinct = raw.unique()
    as_int = distinct.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and bool((as_int.cast(pl.String) == distinct).all()):
        pairs = sorted(zip(as_int.to_list(), distinct.to_list()))
        ids: list[RawId] = [number for number, _ in pairs]
        keys = [text for _, text in pairs]
    else:
        keys = sorted(distinct.to_list())  # Python str order: by code point, locale-independent
        ids = list(keys)
    return ids, {key: start + j for j, key in enumerate(keys)}


def _split_by_user(frame: pl.DataFrame, num_users: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut the (u, time, row)-sorted frame into per-user arrays: items int64, times float64."""
    users = frame["u"].to_numpy()
    item_col = frame["i"].to_numpy().astype(np.int64, copy=False)
    time_col = frame["time"].to_numpy().astype(np.float64, copy=False)
    bounds = np.searchsorted(users, np.arange(1, num_users))
    items = [a.copy() for a in np.split(item_col, bounds)]
    times = [a.copy() for a in np.split(time_col, bounds)]
    return items, times


def dataset_summary(data: SequenceData) -> str:
    """A few human-readable lines about where the data came from and what was kept."""
    return data.report.summary()
