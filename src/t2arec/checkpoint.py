"""Checkpoints: one file with weights, the full run config and the id vocabularies.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves a half-written checkpoint; read with ``weights_only=True``, so loading executes no code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path`` and move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any],
                    item_ids: list, dataset: dict[str, Any], training: dict[str, Any]) -> None:
    """``training``: best epoch, training seconds and validation metrics, kept for re-evaluation."""
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "item_ids": list(item_ids),
        "dataset": dataset,
        "training": training,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a t2arec checkpoint (torch.load failed: {reason})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a t2arec checkpoint (it holds a {type(payload).__name__}, not a dict)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format_version')!r}")
    return payload
