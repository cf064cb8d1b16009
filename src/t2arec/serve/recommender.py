"""Raw ids in, raw ids out: a trained model as an online recommender.

``Recommender.recommend`` builds exactly the arrays the offline evaluator builds
(``data.batching.prediction_inputs``: the last ``max_len`` interactions, float64 gaps inside the
window cast to float32, 0 for the window's first interaction, ``now`` minus the last timestamp,
left padding) and scores them as the evaluator does (``align.use_scores_scoped``), with the step size
stored in the checkpoint. ``config.align.scope`` says what a step covers: "request" (the default of
``Recommender.load``, of ``t2arec serve`` and of ``t2arec recommend``) gives every request its own
step from the trained parameters, so a request's answer depends on that request alone; "batch" takes
one step over everything scored together, as the paper's evaluation does, and restores the parameters
bit for bit afterwards. For the same inputs grouped the same way its scores equal the evaluator's.
When no step was chosen on validation, the checkpoint's ``align.enabled`` is false and no step runs
unless ``Recommender.load(..., align=True)`` forces it.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2arec import scoring
from t2arec.align import SCOPES, alignment_runs, score_batch_scoped, use_scores_scoped
from t2arec.config import RunConfig
from t2arec.data.batching import prediction_inputs
from t2arec.data.types import RawId
from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.scoring import DenseScores, NonFiniteScores  # noqa: F401 (NonFiniteScores: still importable from here)

# Timestamps are Unix seconds (the unit the model was trained in). Anything larger in magnitude is
# refused: it is most likely milliseconds, and float32 gaps would lose all precision or overflow.
MAX_ABS_TIME = 1e12


class RequestError(ValueError):
    """A bad input. ``user`` is the index of the history (None: the request as a whole) and
    ``field`` the offending field relative to it, e.g. ``timestamps[3]``."""

    def __init__(self, user: int | None, field: str, reason: str) -> None:
        self.user, self.field, self.reason = user, field, reason
        super().__init__(f"{self.location}: {reason}")

    @property
    def location(self) -> str:
        return self.field if self.user is None else f"users[{self.user}].{self.field}"


@dataclass(frozen=True)
class History:
    """One user's interactions: raw item ids and their timestamps (seconds), oldest first."""

    items: Sequence[RawId]
    timestamps: Sequence[float]


@dataclass
class Recommendation:
    """The top-k raw item ids, best first, their scores, and how many history ids were unknown."""

    items: list[RawId]
    scores: list[float]
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "skipped": self.skipped}


@dataclass
class EncodedUser:
    """A validated history in the model's vocabulary (unknown ids removed with their timestamps)."""

    items: np.ndarray  # (n,) int64 in 1..num_items
    times: np.ndarray  # (n,) float64 seconds
    now: float
    skipped: int


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_time(value: Any, user: int, name: str) -> float:
    if not _is_number(value):
        raise RequestError(user, name, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise RequestError(user, name, f"must be a finite number, got {value}")
    if abs(value) > MAX_ABS_TIME:
        raise RequestError(user, name, f"{value:g} is out of range: timestamps are Unix seconds "
                                       f"with magnitude <= {MAX_ABS_TIME:g}")
    return value


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Equal digests mean the parameters are equal bit for bit (used to check that serving, with its
    test-time alignment, leaves the checkpoint's parameters untouched).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def top_k(scores: torch.Tensor, ks: Sequence[int], exclude: Sequence[np.ndarray | None],
          chunk: int | None = None) -> list[tuple[list[int], list[float]]]:
    """Per row, the ``ks[row]`` best item indices (1-based) and their scores, best first.

    ``scores`` (B, N) are for items 1..N. Equal scores keep item-index order (as a stable sort of the
    whole row), so the result is deterministic; items in ``exclude[row]`` (1-based) are never
    returned. ``t2arec.scoring.top_k`` with the scores already computed (``Recommender`` scores a
    block of items at a time instead).
    """
    return scoring.top_k(DenseScores(scores), ks, exclude, chunk)


@dataclass
class Recommender:
    """A trained sequential recommender behind raw item ids.

    ``item_ids[0]`` is padding (None); ``item_ids[j]`` is the raw id of item index j. Ids are ints
    when every training id was an integer, strings otherwise; look-up accepts either spelling
    (5 and "5" are the same item), outputs keep the vocabulary's own type.
    """

    model: SequentialRecommender
    config: RunConfig
    item_ids: list[RawId]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # items scored per block by ``recommend`` (None: as many as fit t2arec.scoring.DEFAULT_MAX_BLOCK
    # scores, i.e. one block for any catalogue up to 2^26 / batch size items)
    chunk: int | None = None
    index: dict[RawId, int] = field(init=False, repr=False)
    integer_ids: bool = field(init=False)

    def __post_init__(self) -> None:
        raw = self.item_ids[1:]
        self.integer_ids = all(_is_int(r) for r in raw)
        self.index = {self._canonical(r): j for j, r in enumerate(raw, start=1)}
        self.model.eval()

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", align: bool | None = None,
             scope: str | None = "request") -> "Recommender":
        """``align``: None follows the checkpoint (no step when none was chosen on validation); True
        forces its stored step ``align.lr``; False never aligns. ``scope``: "request" (every request
        its own step: answers that depend on the request alone), "batch" (one step over everything
        scored together, as in evaluation) or None (the checkpoint's ``align.scope``)."""
        from t2arec.pipeline import load_model, resolve_device

        model, cfg, payload = load_model(checkpoint, device)
        if align is not None:
            cfg.align.enabled = align
        if scope is not None:
            if scope not in SCOPES:
                raise ValueError(f"align scope must be 'batch' or 'request', not {scope!r}")
            cfg.align.scope = scope
        if cfg.align.enabled and cfg.align.scope == "request" and model.has_alignment_loss:
            from t2arec.models.t2arec_request import request_scope_unsupported

            if (reason := request_scope_unsupported(model)) is not None:
                raise ValueError(f"{checkpoint}: this checkpoint aligns at test time, but {reason} "
                                 f"(--align-scope batch), or serve it without alignment (--no-align)")
        return cls(model, cfg, list(payload["item_ids"]), resolve_device(device))

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def max_len(self) -> int:
        return self.config.data.max_len

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def scope(self) -> str:
        """What one test-time step covers: "request" or "batch" (``config.align.scope``)."""
        return self.config.align.scope

    @property
    def aligns(self) -> bool:
        """Whether ``align=True`` runs a test-time alignment step for this model and config."""
        return alignment_runs(self.model, self.config.align)

    def _canonical(self, raw: Any) -> Any:
        """The key an id is looked up by, or None when it cannot be in the vocabulary."""
        if self.integer_ids:
            if _is_int(raw):
                return int(raw)
            if isinstance(raw, str):
                try:
                    number = int(raw)
                except ValueError:
                    return None
                return number if str(number) == raw else None  # "007", "+7", " 7" are not 7
            return None
        if _is_int(raw):
            return str(int(raw))
        return raw if isinstance(raw, str) else None

    def lookup(self, raw: RawId) -> int:
        """Item index of a raw id, 0 when unknown."""
        key = self._canonical(raw)
        return 0 if key is None else self.index.get(key, 0)

    def parameter_digest(self) -> str:
        return state_digest(self.model.state_dict())

    # --- validation and encoding ---------------------------------------------------------------------
    def encode_user(self, history: History | Sequence[Any], now: Any, user: int = 0,
                    strict: bool = False) -> EncodedUser:
        """Validate one history and map it to item indices. Raises ``RequestError`` naming the field."""
        if isinstance(history, History):
            items, timestamps = history.items, history.timestamps
        elif isinstance(history, Sequence) and not isinstance(history, str) and len(history) == 2:
            items, timestamps = history
        else:
            raise RequestError(user, "history", "expected History(items, timestamps) or an (items, timestamps) pair")
        for name, values in (("items", items), ("timestamps", timestamps)):
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
                raise RequestError(user, name, f"expected a list, got {type(values).__name__}")
        if len(items) == 0:
            raise RequestError(user, "items", "the history is empty; give at least one interaction")
        if len(timestamps) != len(items):
            raise RequestError(user, "timestamps", f"has {len(timestamps)} value(s) but items has {len(items)}")
        times = np.empty(len(timestamps), dtype=np.float64)
        for j, t in enumerate(timestamps):
            times[j] = _check_time(t, user, f"timestamps[{j}]")
            if j and times[j] < times[j - 1]:
                raise RequestError(user, f"timestamps[{j}]", f"{times[j]:.17g} is before the previous timestamp "
                                   f"{times[j - 1]:.17g}; timestamps must be non-decreasing (oldest first)")
        now = _check_time(now, user, "now")
        if now < times[-1]:
            raise RequestError(user, "now", f"{now:.17g} is before the last interaction at {times[-1]:.17g}")
        index = np.empty(len(items), dtype=np.int64)
        for j, raw in enumerate(items):
            if not (_is_int(raw) or isinstance(raw, str)):
                raise RequestError(user, f"items[{j}]", f"expected an int or str item id, got {type(raw).__name__}")
            index[j] = self.lookup(raw)
            if strict and index[j] == 0:
                raise RequestError(user, f"items[{j}]", f"unknown item id {raw!r}")
        known = index > 0
        if not known.any():
            raise RequestError(user, "items", f"none of the {len(items)} item ids is in the model's vocabulary")
        return EncodedUser(index[known], times[known], now, int((~known).sum()))

    def encode(self, histories: Sequence[History | Sequence[Any]], now: Sequence[Any],
               strict: bool = False) -> list[EncodedUser]:
        if len(histories) == 0:
            raise RequestError(None, "users", "give at least one history")
        if len(now) != len(histories):
            raise RequestError(None, "now", f"has {len(now)} values for {len(histories)} histories")
        return [self.encode_user(h, t, u, strict) for u, (h, t) in enumerate(zip(histories, now))]

    # --- scoring and ranking ---------------------------------------------------------------------------
    def batch(self, users: Sequence[EncodedUser]) -> SeqBatch:
        """The evaluator's arrays for these users (targets are unused and 0)."""
        items, gaps, next_gap = prediction_inputs([u.items for u in users], [u.times for u in users],
                                                  [u.now for u in users], self.max_len)
        return SeqBatch(torch.from_numpy(items), torch.from_numpy(gaps), torch.from_numpy(next_gap),
                        torch.zeros(len(users), dtype=torch.int64)).to(self.device)

    def scores(self, users: Sequence[EncodedUser], align: bool = True,
               requests: Sequence[int] | None = None) -> torch.Tensor:
        """(B, num_items) scores of items 1..num_items, after test-time alignment if ``align``
        (``requests`` as in ``recommend_encoded``).

        The whole matrix at once: ``recommend`` does not use this, it keeps a running top-k over blocks.
        """
        scores, _ = score_batch_scoped(self.model, self.batch(users), self.config.align if align else None,
                                       self._requests(users, requests))
        return scores

    @staticmethod
    def _requests(users: Sequence[EncodedUser], requests: Sequence[int] | None) -> Sequence[int]:
        """One request label per user; None: all of them one request."""
        if requests is None:
            return [0] * len(users)
        if len(requests) != len(users):
            raise ValueError("requests needs one label per user")
        return requests

    def recommend_encoded(self, users: Sequence[EncodedUser], k: int | Sequence[int] = 10, align: bool = True,
                          exclude_seen: bool | Sequence[bool] = False,
                          requests: Sequence[int] | None = None) -> list[Recommendation]:
        """One model call for all ``users``; ``k`` and ``exclude_seen`` may differ per user.

        ``requests`` labels each user's request (users with the same label are one request); None
        makes all ``users`` one request. In request scope every request takes its own step, so a
        user's result depends only on the users of its own request; in batch scope ``requests`` is
        ignored and one step covers all ``users``.
        """
        ks = [int(v) for v in ([k] * len(users) if isinstance(k, numbers.Integral) else k)]
        excludes = [exclude_seen] * len(users) if isinstance(exclude_seen, (bool, np.bool_)) else list(exclude_seen)
        if len(ks) != len(users) or len(excludes) != len(users):
            raise ValueError("k and exclude_seen need one value per user")
        if any(v < 1 for v in ks):
            raise ValueError(f"k must be >= 1, got {min(ks)}")
        exclude = [np.unique(u.items) if ex else None for u, ex in zip(users, excludes)]
        # ranked a block of items at a time after the alignment: memory is bounded for any catalogue,
        # and a NaN or infinite score in any block raises NonFiniteScores
        top, _ = use_scores_scoped(self.model, self.batch(users), self.config.align if align else None,
                                   lambda scores: scoring.top_k(scores, ks, exclude, self.chunk, require_finite=True),
                                   self._requests(users, requests))
        return [Recommendation([self.item_ids[i] for i in idx], vals, user.skipped)
                for (idx, vals), user in zip(top, users)]

    def recommend(self, histories: Sequence[History | Sequence[Any]], now: Sequence[float],
                  k: int | Sequence[int] = 10, align: bool = True, exclude_seen: bool | Sequence[bool] = False,
                  strict: bool = False, requests: Sequence[int] | None = None) -> list[Recommendation]:
        """Top-``k`` raw item ids with scores for each history, predicting the interaction at ``now``.

        A history is ``History(items, timestamps)`` or an ``(items, timestamps)`` pair, oldest first,
        timestamps in Unix seconds. All histories are scored together. With ``align``, the call is one
        request (like one HTTP body): one test-time step on its histories' loss, in either scope, so a
        call's answer depends on its histories alone; ``requests`` (a label per history) splits it into
        several requests, each with its own step in request scope (batch scope ignores the labels).
        Unknown item ids are left out (with their timestamps) and counted in ``skipped``; with
        ``strict`` they are an error. ``exclude_seen`` never recommends an item of the history.
        ``k`` and ``exclude_seen`` may also be given per user (they do not change the scores).
        """
        return self.recommend_encoded(self.encode(histories, now, strict), k, align, exclude_seen, requests)
