"""SequenceData -> padded arrays -> SeqBatch tensors.

Everything is built once as NumPy matrices (one row per example, left-padded to ``max_len``);
a batch is a row slice. Time differences are taken in float64 before the cast to float32, because
float32 cannot resolve seconds at Unix-epoch magnitudes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from t2arec.data.types import SequenceData
from t2arec.models.base import SeqBatch


@dataclass
class Examples:
    """Padded examples. items/gaps/targets: (N, L) or targets (N,); next_gap: (N,); users: (N,)."""

    items: np.ndarray
    gaps: np.ndarray
    next_gap: np.ndarray
    targets: np.ndarray
    users: np.ndarray
    target_times: np.ndarray  # (N,) timestamp of the (last) predicted interaction, seconds

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, rows: np.ndarray | slice) -> SeqBatch:
        return SeqBatch(
            torch.from_numpy(self.items[rows]),
            torch.from_numpy(self.gaps[rows]),
            torch.from_numpy(self.next_gap[rows]),
            torch.from_numpy(self.targets[rows]),
        )


def _left_pad(rows: list[np.ndarray], max_len: int, dtype: type) -> np.ndarray:
    out = np.zeros((len(rows), max_len), dtype=dtype)
    for r, row in enumerate(rows):
        if len(row):
            out[r, max_len - len(row):] = row
    return out


def _gaps(times: np.ndarray) -> np.ndarray:
    """Seconds since the previous interaction inside this input; 0 for its first interaction."""
    gaps = np.zeros(len(times), dtype=np.float64)
    gaps[1:] = np.diff(times)
    return gaps


def prediction_inputs(item_seqs: Sequence[np.ndarray], time_seqs: Sequence[np.ndarray],
                      next_times: Sequence[float], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model inputs for predicting each sequence's next interaction at ``next_times``.

    Keeps the last ``max_len`` interactions of each (non-empty) sequence and returns, left-padded to
    ``max_len``: items (N, L) int64; gaps (N, L) float32, differences inside the kept window taken in
    float64, 0 for its first interaction; next_gap (N,) float32, next time minus the last time.
    The evaluator and the online ``Recommender`` both build their batches here.
    """
    inputs, gaps, next_gap = [], [], []
    for items, times, next_time in zip(item_seqs, time_seqs, next_times, strict=True):
        seq_items, seq_times = items[-max_len:], np.asarray(times[-max_len:], dtype=np.float64)
        inputs.append(seq_items)
        gaps.append(_gaps(seq_times))
        next_gap.append(next_time - seq_times[-1])
    return (_left_pad(inputs, max_len, np.int64),
            _left_pad(gaps, max_len, np.float64).astype(np.float32),
            np.asarray(next_gap, dtype=np.float64).astype(np.float32))


def evaluation_examples(data: SequenceData, split: str, max_len: int) -> Examples:
    """One example per user. ``split`` "valid": input = train part, target = second-to-last item;
    "test": input = train part + validation item, target = last item. Inputs keep the last ``max_len``."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    end = -2 if split == "valid" else -1
    items, gaps, next_gap = prediction_inputs([s[:end] for s in data.items], [t[:end] for t in data.times],
                                              [t[end] for t in data.times], max_len)
    return Examples(
        items=items,
        gaps=gaps,
        next_gap=next_gap,
        targets=np.asarray([s[end] for s in data.items], dtype=np.int64),
        users=np.arange(data.num_users, dtype=np.int64),
        target_times=np.asarray([t[end] for t in data.times], dtype=np.float64),
    )


def training_windows(data: SequenceData, max_len: int, stride: int | None = None) -> Examples:
    """Windows over each user's training part so that every training interaction but the first is
    a target exactly once.

    Targets are grouped from the end in runs of ``stride`` (default ``max_len``); the window for a
    run holds the ``max_len`` interactions before its last target, so with ``stride < max_len``
    earlier positions serve as context only (their loss is masked by target 0).
    """
    stride = stride or max_len
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in 1..max_len ({max_len}), got {stride}")
    inputs, gaps, next_gap, targets, users, target_times = [], [], [], [], [], []
    for user, (items, times) in enumerate(zip(data.items, data.times)):
        train_items, train_times = items[:-2], times[:-2]
        last = len(train_items) - 1  # index of the last training target
        while last >= 1:
            first_target = max(1, last - stride + 1)
            start = max(0, last - max_len)
            window_items = train_items[start:last]
            window_targets = train_items[start + 1 : last + 1].copy()
            window_targets[: first_target - (start + 1)] = 0  # context only, trained by a later window
            inputs.append(window_items)
            gaps.append(_gaps(train_times[start:last]))
            next_gap.append(train_times[last] - train_times[last - 1])
            targets.append(window_targets)
            users.append(user)
            target_times.append(train_times[last])
            last = first_target - 1
    return Examples(
        items=_left_pad(inputs, max_len, np.int64),
        gaps=_left_pad(gaps, max_len, np.float64).astype(np.float32),
        next_gap=np.asarray(next_gap, dtype=np.float64).astype(np.float32),
        targets=_left_pad(targets, max_len, np.int64),
        users=np.asarray(users, dtype=np.int64),
        target_times=np.asarray(target_times, dtype=np.float64),
    )
