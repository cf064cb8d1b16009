"""Model registry: a name -> its config dataclass and how to build it.

Every config dataclass has ``num_items`` as a field, set from the data when the model is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.models.t2arec import T2ARec, T2ARecConfig

if TYPE_CHECKING:
    from t2arec.config import RunConfig, TrainConfig


@dataclass(frozen=True)
class ModelSpec:
    config: type  # the model's config dataclass
    build: Callable[[Any, "TrainConfig"], SequentialRecommender]  # (model config, training config) -> model


REGISTRY: dict[str, ModelSpec] = {
    "t2arec": ModelSpec(T2ARecConfig, lambda cfg, train: T2ARec(cfg, mu_time=train.mu_time, mu_state=train.mu_state)),
}
MODEL_NAMES = tuple(REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(MODEL_NAMES)})")
    return REGISTRY[name]


def build_model(cfg: "RunConfig", num_items: int) -> SequentialRecommender:
    spec = model_spec(cfg.model_name)
    return spec.build(dataclasses.replace(cfg.model, num_items=num_items), cfg.train)


__all__ = ["SeqBatch", "SequentialRecommender", "T2ARec", "T2ARecConfig", "REGISTRY", "MODEL_NAMES",
           "build_model", "model_spec"]
