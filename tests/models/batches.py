"""Small batch builders shared by the model tests (no timestamps: gaps are zero)."""
import torch

from t2arec.models.base import SeqBatch


def eval_batch(items) -> SeqBatch:
    items = torch.as_tensor(items, dtype=torch.long)
    b, length = items.shape
    return SeqBatch(items, torch.zeros(b, length), torch.zeros(b), torch.zeros(b, dtype=torch.long))


def train_batch(items, targets) -> SeqBatch:
    items = torch.as_tensor(items, dtype=torch.long)
    b, length = items.shape
    return SeqBatch(items, torch.zeros(b, length), torch.zeros(b), torch.as_tensor(targets, dtype=torch.long))


def shift_batch(sequences, length) -> SeqBatch:
    """Left-padded training windows: input s[:-1], target s[1:]."""
    items = [[0] * (length - len(s) + 1) + s[:-1] for s in sequences]
    targets = [[0] * (length - len(s) + 1) + s[1:] for s in sequences]
    return train_batch(items, targets)
