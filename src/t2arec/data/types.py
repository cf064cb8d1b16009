"""The two data shapes that travel through t2arec.

``Interactions`` is what a reader or the generator produces: one row per event, raw ids.
``SequenceData`` is what ``prepare`` makes of it: per-user, time-sorted sequences of dense item
indices (1..num_items, 0 is padding), with the raw-id vocabularies kept so results map back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl


class DataError(ValueError):
    """Bad input data. The message names the file, line or column and what is wrong."""


RawId = str | int


@dataclass(init=False, eq=False)
class Interactions:
    """A raw interaction log, one row per event in the order the rows were read.

    Stored compactly, so that a log of any size costs about 16 bytes a row whatever its ids look
    like: ``codes`` has the columns ``user`` (UInt32), ``item`` (UInt32) and ``time`` (Float64,
    seconds); ``user``/``item`` are positions in ``user_ids``/``item_ids``, the raw ids as read
    (Utf8; either may hold ids no row uses). Ids stay strings here; ``prepare`` decides whether they
    were all integers. ``frame`` decodes the rows (user Utf8, item Utf8, time Float64), for small logs.

    Build one from raw ids with ``Interactions(frame=..., source=..., time_unit=..., rows_read=...)``
    or from codes with ``Interactions.from_codes``.
    """

    codes: pl.DataFrame
    user_ids: pl.Series
    item_ids: pl.Series
    source: str
    time_unit: str  # how the input's time was read: "seconds", "milliseconds" or "datetime"
    rows_read: int
    dropped: dict[str, int]  # reason -> rows dropped by design

    def __init__(self, frame: pl.DataFrame, source: str, time_unit: str, rows_read: int,
                 dropped: dict[str, int] | None = None) -> None:
        """``frame``: columns ``user``, ``item`` (raw ids, Utf8) and ``time`` (seconds)."""
        user, user_ids = encode_ids(frame["user"])
        item, item_ids = encode_ids(frame["item"])
        codes = pl.DataFrame({"user": user, "item": item, "time": frame["time"].cast(pl.Float64)})
        self._set(codes, user_ids, item_ids, source, time_unit, rows_read, dropped)

    @classmethod
    def from_codes(cls, codes: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series, source: str,
                   time_unit: str, rows_read: int, dropped: dict[str, int] | None = None) -> Interactions:
        """An ``Interactions`` from coded rows (see the class) without decoding them."""
        self = cls.__new__(cls)
        self._set(codes, user_ids, item_ids, source, time_unit, rows_read, dropped)
        return self

    def _set(self, codes: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series, source: str,
             time_unit: str, rows_read: int, dropped: dict[str, int] | None) -> None:
        self.codes = codes.select("user", "item", "time")
        self.user_ids = user_ids.rename("user")
        self.item_ids = item_ids.rename("item")
        self.source = source
        self.time_unit = time_unit
        self.rows_read = rows_read
        self.dropped = dict(dropped or {})

    @property
    def frame(self) -> pl.DataFrame:
        """The rows with their raw ids: user Utf8, item Utf8, time Float64 (built on each call)."""
        return pl.DataFrame({
            "user": self.user_ids.gather(self.codes["user"]),
            "item": self.item_ids.gather(self.codes["item"]),
            "time": self.codes["time"],
        })


def encode_ids(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Raw ids -> (UInt32 codes (n,), the distinct ids as Utf8, ``ids[code]`` = the raw id).

    A categorical with its own fresh set of categories does the work: codes count up from 0 for
    this log alone, and the mapping is freed with the data (Polars keeps it only while a column
    uses it). Nulls stay null.
    """
    categories = pl.Categories.random()
    coded = values.cast(pl.String).cast(pl.Categorical(categories))
    return split_categorical(coded, categories)


def split_categorical(coded: pl.Series, categories: pl.Categories) -> tuple[pl.Series, pl.Series]:
    """A categorical column -> (its UInt32 codes, its categories as Utf8 indexed by code).

    The categories are read while ``coded`` is alive, since Polars drops them with the last user.
    """
    ids = categories.to_series().cast(pl.String)
    return coded.to_physical().rename(coded.name), ids


@dataclass
class DatasetReport:
    """What happened to the data between the file and the model, for results.json and the CLI."""

    name: str
    source: str
    time_unit: str
    rows_read: int
    users: int
    items: int
    interactions: int
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines: source, time unit, rows read and dropped, what was kept."""
        dropped = ", ".join(f"{k} {v:,}" for k, v in self.dropped.items()) or "none"
        avg = self.interactions / self.users if self.users else 0.0
        return "\n".join([
            f"dataset      {self.name}",
            f"source       {self.source}",
            f"time unit    {self.time_unit}",
            f"rows read    {self.rows_read:,}",
            f"dropped      {dropped}",
            f"users        {self.users:,}",
            f"items        {self.items:,}",
            f"interactions {self.interactions:,} (average length {avg:.2f})",
        ])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "time_unit": self.time_unit,
            "rows_read": self.rows_read,
            "users": self.users,
            "items": self.items,
            "interactions": self.interactions,
            "dropped": dict(self.dropped),
        }


@dataclass
class SequenceData:
    """Per-user interaction sequences with dense ids.

    ``items[u]`` is an int64 array of item indices in 1..num_items in time order (stable for ties),
    ``times[u]`` the matching float64 timestamps in seconds. The full sequence is kept; the
    leave-one-out split is by position: ``[:-2]`` train, ``[-2]`` validation target, ``[-1]`` test target.
    ``item_ids[i]`` is the raw id of item index ``i`` (``item_ids[0]`` is ``None``, the padding);
    ``user_ids[u]`` the raw id of user ``u``. Raw ids are ints when every raw id of that kind
    was an integer, strings otherwise.
    """

    items: list[np.ndarray]
    times: list[np.ndarray]
    item_ids: list[RawId | None]
    user_ids: list[RawId]
    report: DatasetReport

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.items))
