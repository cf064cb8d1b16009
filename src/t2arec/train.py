"""The training loop: shuffled windows, Adam (at a constant learning rate unless decay on a plateau
is asked for), validation NDCG@10 at regular amounts of work, early stopping, and a resumable state
written after every epoch.

Work is counted in optimiser steps, not epochs: an epoch of non-overlapping windows is about 15 steps
on a small log of long histories and thousands on a large one, so "10 epochs of patience" would mean
anything from 150 steps to a day. Validation runs at every multiple of ``eval_steps``: inside an
epoch longer than that (``validate_within_epochs``, on by default; off, a long epoch validates only
at its end), at the end of a shorter epoch whose steps pass a multiple. Training stops once
``patience_steps`` steps (or ``patience_fraction`` of the best validation's step, when longer) have
gone by without a better validation NDCG@10. With ``lr_decay < 1`` the
learning rate is multiplied by it whenever ``lr_plateau_steps`` steps have gone by without a better
validation since the best or the last decay (PyTorch's ReduceLROnPlateau, counted in steps).

The best weights are kept in memory and left in the model; writing the final checkpoint is the
caller's job (``pipeline.run``). With ``state_path``, the whole training state (weights, optimiser,
random generators, best weights, history) is written atomically after every epoch, and a later call
with the same path continues from it exactly where it stopped.

Under torchrun (a process group is running, ``t2arec.distributed``) the same loop runs on every
process: each takes its slice of every global batch, DistributedDataParallel averages the gradients,
validation is shared, and only rank 0 writes the training state (which all ranks resume from).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from t2arec import distributed
from t2arec.align import AlignConfig
from t2arec.checkpoint import atomic_write
from t2arec.config import TrainConfig
from t2arec.data.batching import Examples
from t2arec.evaluate import evaluate
from t2arec.models.base import SequentialRecommender

STATE_VERSION = 1


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    best_step: int = 0
    steps: int = 0  # optimiser steps taken in all
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    train_seconds: float = 0.0


@dataclass
class Progress:
    """Counters that a resumed run picks up again."""

    epoch: int = 0
    step: int = 0
    last_eval_step: int = 0
    best_score: float = -1.0
    best_step: int = 0
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # patience ran out
    last_decay_step: int = 0  # when the learning rate was last decayed (0: never)


def validation_points(history: list[dict[str, Any]], metric: str = "ndcg@10") -> list[tuple[int, float]]:
    """(step, validation ``metric``) of every validation in a training history, in order: an epoch's
    row holds one at its end, or under "validations" all those made inside it."""
    points: list[tuple[int, float]] = []
    for row in history:
        if "validations" in row:
            points += [(v["step"], v[metric]) for v in row["validations"]]
        elif f"valid_{metric}" in row:
            points.append((row["step"], row[f"valid_{metric}"]))
    return points


def steps_per_epoch(windows: Examples, cfg: TrainConfig) -> int:
    return math.ceil(len(windows) * cfg.window_repeats / cfg.batch_size)


def run_epoch(model: SequentialRecommender, windows: Examples, optimizer: torch.optim.Optimizer,
              cfg: TrainConfig, rng: np.random.Generator, device: torch.device | str,
              shared: torch.nn.Module | None = None,
              after_step: Callable[[int], bool] | None = None) -> dict[str, float]:
    """One pass over all windows (``window_repeats`` times each) in a random order; the mean of each loss.

    ``shared``: the model's loss under DistributedDataParallel (``distributed.wrap_for_training``);
    each global batch of ``cfg.batch_size`` windows is then split across the ranks, and the losses
    returned are those of the global batches, the same on every rank.
    ``after_step``: called with the number of steps taken so far in this epoch after each step; when
    it returns True the epoch ends there (the means are then over the steps taken).
    """
    trained = model if shared is None else shared
    trained.train()
    order = rng.permutation(np.tile(np.arange(len(windows)), cfg.window_repeats))
    sums: dict[str, float] = {}
    batches = 0
    for begin in range(0, len(order), cfg.batch_size):
        rows = order[begin : begin + cfg.batch_size]
        if shared is None:
            losses = model.training_losses(windows.batch(rows).to(device))
            loss = losses["total"]
        else:
            mine, holds_windows = distributed.rank_rows(rows)
            loss, losses = shared(windows.batch(mine).to(device), holds_windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        batches += 1
        if after_step is not None and after_step(batches):  # (evaluation restores the train mode)
            break
    return {name: total / max(batches, 1) for name, total in sums.items()}


def _plateau_reached(done: Progress, cfg: TrainConfig) -> bool:
    """Whether ``cfg.lr_plateau_steps`` steps have passed without a better validation, counted from
    the best step or from the last decay, whichever is later (so each decay gets its own wait)."""
    return cfg.lr_decay < 1.0 and done.step - max(done.best_step, done.last_decay_step) >= cfg.lr_plateau_steps


def _decay_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= factor


def _save_state(path: Path, model: SequentialRecommender, optimizer: torch.optim.Optimizer,
                best_state: dict[str, Any], rng: np.random.Generator, progress: Progress,
                fingerprint: dict[str, Any]) -> None:
    payload = {
        "version": STATE_VERSION,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_model": best_state,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": asdict(progress),
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _read_state(path: Path | None) -> dict[str, Any] | None:
    """The saved training state, None when there is none. With several processes rank 0 reads it
    and sends it to the others, whose disks need not hold it (several nodes)."""
    payload = None
    if distributed.is_main() and path is not None and path.exists():
        payload = torch.load(path, map_location="cpu", weights_only=True)
    return distributed.broadcast_object(payload)


# The patience decides only where a run stops, not what it learns before: a state may go on under
# another patience (``_stopped_on_resume`` checks it against the state's own validations), so the
# fingerprint's copies of these keys are left out when a state is compared with the run resuming it
PATIENCE_KEYS = ("patience_steps", "patience_fraction")


def _without_patience(fingerprint: Any) -> Any:
    if isinstance(fingerprint, dict):
        return {key: _without_patience(value) for key, value in fingerprint.items() if key not in PATIENCE_KEYS}
    return fingerprint


def _load_state(path: Path, payload: dict[str, Any], model: SequentialRecommender, optimizer: torch.optim.Optimizer,
                rng: np.random.Generator, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], Progress]:
    same_run = _without_patience(payload.get("fingerprint")) == _without_patience(fingerprint)
    if payload.get("version") != STATE_VERSION or not same_run:
        raise ValueError(f"{path}: this training state belongs to another run (configuration or data differ); "
                         "remove it or choose another output folder")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return payload["best_model"], Progress(**payload["progress"])


def patience_after(best_step: int, patience_steps: int, patience_fraction: float) -> int:
    """Steps without a better validation that stop a run whose best so far came at ``best_step``:
    ``patience_steps``, or ``patience_fraction`` of ``best_step`` when that is longer."""
    return max(patience_steps, math.ceil(patience_fraction * best_step))


def replay_patience(history: list[dict[str, Any]], patience_steps: int,
                    patience_fraction: float = 0.0) -> tuple[float, int, int | None]:
    """(best validation NDCG@10, its step, the step training stops at) of a training history had its
    patience been ``patience_steps`` and ``patience_fraction`` (the rule of ``_validate``). The stop is
    None when that patience would not have run out within the history."""
    best, best_step = -1.0, 0
    for step, score in validation_points(history):
        if score > best:
            best, best_step = score, step
        if step - best_step >= patience_after(best_step, patience_steps, patience_fraction):
            return best, best_step, step
    return best, best_step, None


def _stopped_on_resume(path: Path, done: Progress, cfg: TrainConfig) -> bool:
    """Whether a resumed run has stopped under ``cfg``'s patience, which may differ from the one it was
    trained with. Such a state goes on exactly as a run trained with ``cfg``'s patience from the start,
    unless it already did training that run would not have done, or ended where that run goes on."""
    _, _, stop = replay_patience(done.history, cfg.patience_steps, cfg.patience_fraction)
    patience = f"patience_steps={cfg.patience_steps}, patience_fraction={cfg.patience_fraction}"
    if stop is not None and stop < done.step:
        raise ValueError(f"{path}: this training state went on to step {done.step}, past step {stop} where "
                         f"{patience} stops the run; remove it or resume with the patience it was trained with")
    if stop is None and done.stopped:
        # it may have ended inside an epoch, whose remaining steps a longer patience would have taken
        raise ValueError(f"{path}: this training state's run stopped at step {done.step}, where {patience} "
                         "goes on; remove it to train afresh with that patience")
    return stop is not None


def _validate(model: SequentialRecommender, valid: Examples, align: AlignConfig, cfg: TrainConfig,
              optimizer: torch.optim.Optimizer, done: Progress, epoch: int, best_state: dict[str, Any],
              device: torch.device | str) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate at ``done.step``: keep the weights when NDCG@10 is the best yet, then decide whether
    patience ran out and whether the learning rate decays. Returns the metrics and the best weights."""
    valid_align = align if cfg.validate_aligned else None
    metrics = evaluate(model, valid, valid_align, batch_size=align.batch_size, device=device).metrics
    done.last_eval_step = done.step
    if metrics["ndcg@10"] > done.best_score:
        best_state = copy.deepcopy(model.state_dict())
        done.best_score, done.best_step, done.best_epoch = metrics["ndcg@10"], done.step, epoch
        done.best_valid = metrics
    done.stopped = done.step - done.best_step >= patience_after(done.best_step, cfg.patience_steps,
                                                                cfg.patience_fraction)
    if not done.stopped and _plateau_reached(done, cfg):
        _decay_learning_rate(optimizer, cfg.lr_decay)
        done.last_decay_step = done.step
    return metrics, best_state


def train(model: SequentialRecommender, windows: Examples, valid: Examples, cfg: TrainConfig,
          align: AlignConfig, seed: int, device: torch.device | str = "cpu", progress: bool = True,
          state_path: str | Path | None = None, fingerprint: dict[str, Any] | None = None) -> TrainResult:
    """Train until ``cfg.epochs`` or until patience (``patience_after``) runs out without a better
    validation NDCG@10; leave the best weights in ``model``.

    ``state_path``: where to keep the resumable training state (continued from when it exists);
    ``fingerprint``: what identifies the run (its configuration), checked before resuming; its
    patience keys (``PATIENCE_KEYS``) may differ as long as ``_stopped_on_resume`` accepts the state.
    """
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = fingerprint or {}
    state_path = Path(state_path) if state_path is not None else None
    payload = _read_state(state_path)
    if payload is not None:
        best_state, done = _load_state(state_path, payload, model, optimizer, rng, fingerprint)
        done.stopped = _stopped_on_resume(state_path, done, cfg)
    else:
        best_state, done = copy.deepcopy(model.state_dict()), Progress()
    shared = distributed.wrap_for_training(model, torch.device(device))  # None with one process
    per_epoch = steps_per_epoch(windows, cfg)
    bar = tqdm(range(done.epoch + 1, cfg.epochs + 1), desc="train", disable=not progress, unit="epoch",
               initial=done.epoch, total=cfg.epochs)
    # inside a long epoch, validate at every multiple of eval_steps (train.validate_within_epochs)
    within = cfg.validate_within_epochs and per_epoch > cfg.eval_steps
    for epoch in bar:
        if done.stopped:
            break
        epoch_start, first_step = time.perf_counter(), done.step
        validations: list[dict[str, float]] = []  # this epoch's, with their steps

        def validate_inside(taken: int) -> bool:
            nonlocal best_state
            done.step = first_step + taken
            if done.step % cfg.eval_steps:
                return False
            metrics, best_state = _validate(model, valid, align, cfg, optimizer, done, epoch, best_state, device)
            validations.append({"step": done.step, **metrics})
            return done.stopped

        if shared is not None:
            torch.manual_seed(distributed.epoch_seed(seed, epoch))
        losses = run_epoch(model, windows, optimizer, cfg, rng, device, shared, validate_inside if within else None)
        done.epoch = epoch
        done.step = done.step if within else first_step + per_epoch
        row: dict[str, Any] = {"epoch": epoch, "step": done.step, **{f"loss_{k}": v for k, v in losses.items()}}
        passed_multiple = done.step // cfg.eval_steps > done.last_eval_step // cfg.eval_steps
        if not done.stopped and (passed_multiple or (epoch == cfg.epochs and done.last_eval_step < done.step)):
            metrics, best_state = _validate(model, valid, align, cfg, optimizer, done, epoch, best_state, device)
            validations.append({"step": done.step, **metrics})
        if validations:  # the epoch's row shows its last validation; "validations" lists each of them
            row.update({f"valid_{k}": v for k, v in validations[-1].items() if k != "step"})
            if within:
                row["validations"] = validations
        row["lr"] = optimizer.param_groups[0]["lr"]  # after this epoch's validation: the next epoch's rate
        row["seconds"] = time.perf_counter() - epoch_start
        done.history.append(row)
        done.seconds += row["seconds"]
        bar.set_postfix(step=done.step, loss=f"{losses['total']:.4f}",
                        best=f"{max(done.best_score, 0):.4f}@{done.best_step}")
        if state_path is not None and distributed.is_main():
            _save_state(state_path, model, optimizer, best_state, rng, done, fingerprint)
    model.load_state_dict(best_state)
    return TrainResult(best_epoch=done.best_epoch, best_valid=done.best_valid, best_step=done.best_step,
                       steps=done.step, history=done.history, train_seconds=done.seconds)
