"""Training and evaluation on several processes (``torchrun``), one process when launched alone.

``torchrun --nproc-per-node N -m t2arec run ...`` starts N copies of the command; each learns its
place from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
``process_group`` joins them (gloo on CPU, NCCL on CUDA). Every function here is a no-op, or the
identity, when there is no process group, so the single-process path is the code it always was.

What is shared and how:

- Training: every rank draws the same global permutation of the windows (same seed) and takes its
  slice of each global batch of ``train.batch_size`` windows (``rank_rows``). ``GlobalBatchLoss``
  weighs each loss term by this rank's share of the term's units (target positions, windows, ...),
  so that after DistributedDataParallel averages the gradients, they are the gradients of the loss
  of one process over the whole global batch.
- Evaluation: whole batches, exactly as one process makes them, are dealt to the ranks in turn
  (``rank_share``), because a test-time alignment step depends on which examples share a batch;
  the per-batch results are gathered back in order on every rank (``gather_in_order``), so that
  every rank takes the same early-stopping and step-size decisions.
- Files: only rank 0 writes (``is_main``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from t2arec.models.base import LossTerm, SeqBatch, SequentialRecommender

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or another launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is running (the work is being shared)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """The process that writes files and prints: rank 0 (the launcher's rank when no group is up yet)."""
    return rank() == 0 if active() else int(os.environ.get("RANK", "0")) == 0


def local_device(name: str) -> torch.device:
    """``cuda`` means this process's own GPU (cuda:LOCAL_RANK) when several processes share a node."""
    if name == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block; nothing when launched alone
    (or when the caller already joined one)."""
    if not launched() or active():
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:  # NCCL's collectives run on the current device, which must be this process's own
        torch.cuda.set_device(local_device("cuda"))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if not active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# --- evaluation ---------------------------------------------------------------------------------

def rank_share(count: int) -> range:
    """The items 0..count-1 this rank handles: every ``world_size``-th, starting at its rank."""
    return range(rank(), count, world_size())


def gather_in_order(mine: dict[int, T], count: int) -> list[T]:
    """Items 0..count-1 on every rank, each computed by the rank that held it (``mine``: index -> item)."""
    if not active():
        return [mine[i] for i in range(count)]
    parts: list[dict[int, T] | None] = [None] * world_size()
    dist.all_gather_object(parts, mine)
    merged = {index: item for part in parts for index, item in (part or {}).items()}
    return [merged[i] for i in range(count)]


# --- training -----------------------------------------------------------------------------------

def rank_rows(rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """This rank's slice of a global batch, and whether it holds any of it.

    A short last batch may leave a rank without a window; it then runs the batch's first window with
    no weight at all (``GlobalBatchLoss``), because every rank must take part in every backward
    pass for the gradients to be averaged.
    """
    mine = np.array_split(rows, world_size())[rank()]
    if len(mine) == 0:
        return rows[:1], False
    return mine, True


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed of this rank's random numbers (dropout, Cloze masks) for one epoch: different ranks
    must not draw the same masks for their windows, and a resumed run draws what it would have."""
    return int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0])


def _units(term: LossTerm, holds_windows: bool) -> Tensor:
    """How many units of the global batch this rank's value of ``term`` averages over."""
    if not holds_windows:
        return torch.zeros((), dtype=torch.float64, device=term.value.device)
    if term.count is None:  # the same value on every rank: each holding windows counts once
        return torch.ones((), dtype=torch.float64, device=term.value.device)
    return torch.as_tensor(term.count, device=term.value.device).to(torch.float64)


def global_batch_loss(terms: dict[str, LossTerm], holds_windows: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """(this rank's loss to backpropagate, every term's and the total's value over the global batch).

    A term's mean over the global batch is sum_r mean_r * count_r / count, so this rank contributes
    its mean times its share count_r / count. DistributedDataParallel divides the summed gradients
    by the number of ranks, so the loss backpropagated here is that contribution times the number
    of ranks. One all-reduce carries every term's count and sum.
    """
    names = list(terms)
    counts = torch.stack([_units(term, holds_windows) for term in terms.values()])
    values = torch.stack([term.value.detach().to(torch.float64) for term in terms.values()])
    sums = torch.cat([counts, values * counts])
    dist.all_reduce(sums)
    global_counts, global_sums = sums.split(len(names))
    global_counts = global_counts.clamp(min=1)  # a term no rank has units of is 0, as in one process
    scales = (counts / global_counts * world_size()).tolist()
    loss = sum(term.weight * term.value * scale for term, scale in zip(terms.values(), scales))
    means = global_sums / global_counts
    report = dict(zip(names, means))
    report["total"] = sum(term.weight * mean for term, mean in zip(terms.values(), means))
    return loss, report


class GlobalBatchLoss(nn.Module):
    """The module DistributedDataParallel wraps: its forward is the model's training loss, so that
    DDP's hooks see the forward pass and average the gradients in the backward pass."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SeqBatch, holds_windows: bool) -> tuple[Tensor, dict[str, Tensor]]:
        return global_batch_loss(self.model.loss_terms(batch), holds_windows)


def wrap_for_training(model: SequentialRecommender, device: torch.device) -> nn.Module | None:
    """``model``'s loss under DistributedDataParallel when a process group runs, else None.

    Rank 0's weights are copied to the others here. ``static_graph``: some models leave parameters
    out of the loss (TiM4Rec's last time gate), which DDP must know of; the set is the same at every
    step, so DDP finds it in the first one instead of searching the autograd graph at every step.
    """
    if not active():
        return None
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(GlobalBatchLoss(model), device_ids=device_ids, static_graph=True)
