"""Model registry: a name -> a constructor taking the run config and the number of items."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.models.t2arec import T2ARec, T2ARecConfig

if TYPE_CHECKING:
    from t2arec.config import RunConfig


def build_model(cfg: "RunConfig", num_items: int) -> SequentialRecommender:
    if cfg.model_name == "t2arec":
        model_cfg = dataclasses.replace(cfg.model, num_items=num_items)
        return T2ARec(model_cfg, mu_time=cfg.train.mu_time, mu_state=cfg.train.mu_state)
    raise ValueError(f"unknown model {cfg.model_name!r} (available: {', '.join(MODEL_NAMES)})")


MODEL_NAMES = ("t2arec",)

__all__ = ["SeqBatch", "SequentialRecommender", "T2ARec", "T2ARecConfig", "build_model", "MODEL_NAMES"]
