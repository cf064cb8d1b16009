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


@dataclass
class Interactions:
    """A raw interaction log.

    ``frame`` has exactly the columns ``user`` (Utf8), ``item`` (Utf8) and ``time`` (Float64,
    seconds), in the order the rows were read. Ids stay strings here; ``prepare`` decides whether
    they were all integers.
    """

    frame: pl.DataFrame
    source: str
    time_unit: str  # how the input's time was read: "seconds", "milliseconds" or "datetime"
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped by design


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
