"""A built-in synthetic interest-shift dataset (see docs/synthetic.md for the story in prose).

Items belong to interests (clusters). Each user has a home preference over interests and, late in
their timeline, drifts towards interests that were rare for them; ``shift`` sets how far. Inside an
interest, items form a chain (a fixed sequential order) that users tend to follow, which gives a
sequence model something to learn that popularity cannot. Everything is drawn from one seed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from t2arec.data.types import Interactions

DAY = 86_400.0
YEAR = 365 * DAY
EPOCH = 1_577_836_800.0  # 2020-01-01 00:00 UTC: where the synthetic year starts

ITEM_ZIPF = 0.7  # within-interest popularity ~ 1 / rank**ITEM_ZIPF
INTEREST_ZIPF = 0.5  # global interest popularity ~ 1 / rank**INTEREST_ZIPF
HOME_CONCENTRATION = 0.3  # Dirichlet scale per interest: small = a few dominant home interests
SESSION_MEAN = 5.0  # mean items per session (geometric), capped at SESSION_MAX
SESSION_MAX = 12
P_SWITCH = 0.1  # chance, per step inside a session, to re-draw the interest
P_FOLLOW = 0.6  # chance to follow the interest's item chain instead of a popularity draw
CHAIN_STEPS = (1, 2, 3)  # how far along the chain a follow step moves ...
CHAIN_STEP_P = (0.7, 0.2, 0.1)  # ... and with which probability
DRIFT_POWER = 6.0  # drift weight = shift * tau**DRIFT_POWER: ~0 for most of the timeline, 1 at the end
TREND_SHARPNESS = 1.0  # how much the season of the year favours some interests
INTRA_GAP = (240.0, 0.5)  # within a session: lognormal (median seconds, sigma), ~2-10 minutes
INTER_GAP = (1.5 * DAY, 1.0)  # between sessions: lognormal (median seconds, sigma), hours-weeks
START_SPAN = 0.85 * YEAR  # users start uniformly in the first 85% of the year


@dataclass(frozen=True)
class Catalogue:
    """The item side: which interest each item is in, chains and popularity.

    ``interest``: (num_items,) interest of item index j (raw id ``str(j + 1)``).
    ``members``: (K, S) item index at chain position p of interest k (-1 past the interest's size).
    ``sizes``: (K,) items per interest. ``pop_cdf``: (K, S) cumulative within-interest popularity
    over chain positions (1.0 past the size). ``interest_pop``: (K,) global interest popularity.
    """

    interest: np.ndarray
    members: np.ndarray
    sizes: np.ndarray
    pop_cdf: np.ndarray
    interest_pop: np.ndarray


def make_synthetic(
    num_users: int = 1000,
    num_items: int = 600,
    num_interests: int = 12,
    mean_length: int = 40,
    shift: float = 1.0,
    seed: int = 0,
) -> Interactions:
    """Generate a deterministic interaction log with user interest drift of strength ``shift``.

    ``shift`` in [0, 1]: 0 keeps every user's interest preference fixed; 1 moves it, by the end of
    the user's timeline, entirely onto interests that were rare in the user's home preference.
    Returns ``Interactions`` with string ids ("1".., users and items), time in seconds, rows in
    time order.
    """
    _check_args(num_users, num_items, num_interests, mean_length, shift)
    catalogue_seq, user_seq = np.random.SeedSequence(seed).spawn(2)
    catalogue = build_catalogue(num_items, num_interests, np.random.default_rng(catalogue_seq))
    rng = np.random.default_rng(user_seq)

    lengths = _lengths(num_users, mean_length, rng)  # (U,)
    width = int(lengths.max())
    new_session = _session_starts(lengths, width, rng)  # (U, T) bool
    times = _timestamps(new_session, rng)  # (U, T) seconds since EPOCH
    session = np.cumsum(new_session, axis=1) - 1  # (U, T) session index
    last_session = session[np.arange(num_users), lengths - 1]
    tau = session / np.maximum(last_session, 1)[:, None]  # (U, T) 0 at first session, 1 at last
    end_of_year = np.clip(times[np.arange(num_users), lengths - 1] / YEAR, 0.0, 1.0)

    home = _home_preferences(catalogue.interest_pop, num_users, rng)  # (U, K)
    drift = _drift_targets(home, catalogue.interest_pop, end_of_year, rng)  # (U, K)
    items = _walk(catalogue, home, drift, shift * tau**DRIFT_POWER, new_session, rng)  # (U, T)

    mask = np.arange(width)[None, :] < lengths[:, None]
    user_index = np.broadcast_to(np.arange(num_users)[:, None], mask.shape)[mask]
    frame = pl.DataFrame({
        "user": (user_index + 1).astype(str),
        "item": (items[mask] + 1).astype(str),
        "time": EPOCH + times[mask],
    }).sort("time", maintain_order=True)  # a log in time order, like a real export
    source = (f"synthetic(users={num_users},items={num_items},interests={num_interests},"
              f"mean_length={mean_length},shift={shift:g},seed={seed})")
    return Interactions(frame=frame, source=source, time_unit="seconds", rows_read=frame.height)


def _check_args(num_users: int, num_items: int, num_interests: int, mean_length: int,
                shift: float) -> None:
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if num_interests < 2:
        raise ValueError(f"num_interests must be >= 2 (drift needs somewhere to go), got {num_interests}")
    if num_items < 2 * num_interests:
        raise ValueError(f"num_items must be >= 2 * num_interests, got {num_items} items for "
                         f"{num_interests} interests")
    if mean_length < 10:
        raise ValueError(f"mean_length must be >= 10 (every user gets >= 10 interactions), got {mean_length}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in [0, 1], got {shift}")


def build_catalogue(num_items: int, num_interests: int, rng: np.random.Generator) -> Catalogue:
    """Split items into near-equal interests; give each a random chain order and Zipf popularity."""
    interest = rng.permutation(np.arange(num_items) % num_interests)
    sizes = np.bincount(interest, minlength=num_interests)
    width = int(sizes.max())
    members = np.full((num_interests, width), -1, dtype=np.int64)
    pop_cdf = np.ones((num_interests, width))
    for k in range(num_interests):
        chain = rng.permutation(np.flatnonzero(interest == k))  # chain order is random
        members[k, : sizes[k]] = chain
        # Popularity rank is independent of chain position, so "popular" and "next" differ.
        weight = 1.0 / (rng.permutation(sizes[k]) + 1.0) ** ITEM_ZIPF
        pop_cdf[k, : sizes[k]] = np.cumsum(weight) / weight.sum()
    interest_pop = 1.0 / (rng.permutation(num_interests) + 1.0) ** INTEREST_ZIPF
    return Catalogue(interest=interest, members=members, sizes=sizes, pop_cdf=pop_cdf,
                     interest_pop=interest_pop / interest_pop.sum())


def _lengths(num_users: int, mean_length: int, rng: np.random.Generator) -> np.ndarray:
    """(U,) sequence lengths in [min, 3 * mean]: a floor plus a gamma tail (15..120 by default)."""
    floor = max(10, round(0.375 * mean_length))
    extra = rng.gamma(2.0, (mean_length - floor) / 2.0, size=num_users) if mean_length > floor \
        else np.zeros(num_users)
    return np.clip(floor + np.round(extra), floor, 3 * mean_length).astype(np.int64)


def _session_starts(lengths: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """(U, T) bool, True where a position opens a session (position 0 always does)."""
    num_users = len(lengths)
    sizes = np.minimum(rng.geometric(1.0 / SESSION_MEAN, size=(num_users, width)), SESSION_MAX)
    ends = np.cumsum(sizes, axis=1)  # position after each session
    starts = np.zeros((num_users, width + 1), dtype=bool)
    rows, cols = np.nonzero(ends < width)
    starts[rows, ends[rows, cols]] = True
    starts[:, 0] = True
    return starts[:, :width]


def _timestamps(new_session: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(U, T) seconds since EPOCH: short gaps inside sessions, long gaps between them."""
    shape = new_session.shape
    intra = rng.lognormal(np.log(INTRA_GAP[0]), INTRA_GAP[1], size=shape)
    inter = rng.lognormal(np.log(INTER_GAP[0]), INTER_GAP[1], size=shape)
    # Whole seconds like real logs, and >= 5 s so a user's own events never tie.
    gaps = np.maximum(np.round(np.where(new_session, inter, intra)), 5.0)
    start = np.round(rng.uniform(0.0, START_SPAN, size=shape[0]))
    gaps[:, 0] = 0.0
    return start[:, None] + np.cumsum(gaps, axis=1)


def _home_preferences(interest_pop: np.ndarray, num_users: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(U, K) each user's stationary preference: a sparse Dirichlet around global popularity."""
    alpha = HOME_CONCENTRATION * len(interest_pop) * interest_pop
    return rng.dirichlet(alpha, size=num_users)


def _trend(year_fraction: np.ndarray, num_interests: int) -> np.ndarray:
    """(U, K) seasonal appeal of each interest at a point of the year (interest k peaks at k/K)."""
    phase = np.arange(num_interests) / num_interests
    return np.exp(TREND_SHARPNESS * np.cos(2 * np.pi * (year_fraction[:, None] - phase[None, :])))


def _drift_targets(home: np.ndarray, interest_pop: np.ndarray, end_of_year: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """(U, K) where each user drifts to: two interests from the user's least-preferred half.

    The two are drawn without replacement (Gumbel top-2) in proportion to global popularity times
    what is in season when the user's timeline ends, and weighted 0.7 / 0.3.
    """
    num_users, num_interests = home.shape
    rare = np.argsort(home, axis=1, kind="stable")[:, : num_interests // 2]  # (U, K//2)
    appeal = _trend(end_of_year, num_interests) * interest_pop[None, :]
    keys = np.log(np.take_along_axis(appeal, rare, axis=1)) + rng.gumbel(size=rare.shape)
    top = np.take_along_axis(rare, np.argsort(-keys, axis=1)[:, :2], axis=1)  # (U, 2)
    target = np.zeros_like(home)
    rows = np.arange(num_users)
    target[rows, top[:, 0]] = 0.7
    target[rows, top[:, 1]] += 0.3
    return target


def _categorical(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise inverse-CDF draw: cdf (n, m) non-decreasing, u (n,) uniform -> (n,) in 0..m-1."""
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), cdf.shape[1] - 1)


def _walk(catalogue: Catalogue, home: np.ndarray, drift: np.ndarray, weight: np.ndarray,
          new_session: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(U, T) item indices: all users step together through positions (vectorised over users).

    ``weight`` (U, T) is the drift weight w: the interest preference at a step is
    (1 - w) * home + w * drift. A step re-draws the interest at a session start or with
    P_SWITCH; otherwise it stays and mostly follows the interest's chain.
    """
    num_users, width = new_session.shape
    draws = rng.random(size=(5, num_users, width))  # interest, switch, follow, step, popularity
    step_cdf = np.cumsum(CHAIN_STEP_P)
    interest = np.zeros(num_users, dtype=np.int64)
    position = np.zeros(num_users, dtype=np.int64)
    items = np.zeros((num_users, width), dtype=np.int64)
    for t in range(width):
        preference = (1.0 - weight[:, t, None]) * home + weight[:, t, None] * drift
        redraw = new_session[:, t] | (draws[1, :, t] < P_SWITCH)
        interest = np.where(redraw, _categorical(np.cumsum(preference, axis=1), draws[0, :, t]),
                            interest)
        size = catalogue.sizes[interest]
        follow = ~redraw & (draws[2, :, t] < P_FOLLOW)
        step = np.asarray(CHAIN_STEPS)[np.searchsorted(step_cdf, draws[3, :, t] * step_cdf[-1])]
        popular = np.minimum(_categorical(catalogue.pop_cdf[interest], draws[4, :, t]), size - 1)
        position = np.where(follow, (position + step) % size, popular)
        items[:, t] = catalogue.members[interest, position]
    return items


def item_interests(num_items: int = 600, num_interests: int = 12, seed: int = 0) -> dict[str, int]:
    """Raw item id -> interest, exactly as ``make_synthetic`` with the same arguments assigns it."""
    catalogue_seq, _ = np.random.SeedSequence(seed).spawn(2)
    catalogue = build_catalogue(num_items, num_interests, np.random.default_rng(catalogue_seq))
    return {str(j + 1): int(k) for j, k in enumerate(catalogue.interest)}


def target_interest_overlap(interactions: Interactions, item_interest: Mapping[str, int]) -> float:
    """Fraction of users whose test target (last item) is in their most frequent training interest.

    Training = all but the last two interactions in time order (the leave-one-out split); ties
    for the most frequent interest go to the lowest interest number.
    """
    frame = (interactions.frame.with_row_index("row").sort(["user", "time", "row"])
             .with_columns(pl.col("item").replace_strict(dict(item_interest),
                                                         return_dtype=pl.Int64).alias("k")))
    hits = 0
    users = 0
    for _, group in frame.group_by("user"):
        k = group["k"].to_numpy()
        if len(k) < 3:
            continue
        users += 1
        hits += int(np.bincount(k[:-2]).argmax() == k[-1])
    return hits / users if users else 0.0
