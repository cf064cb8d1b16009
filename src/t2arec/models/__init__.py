"""Model registry: a name -> its config dataclass and how to build it.

Every config dataclass has ``num_items`` as a field, set from the data when the model is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2arec.models.caser import Caser, CaserConfig
from t2arec.models.gru4rec import GRU4Rec, GRU4RecConfig
from t2arec.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from t2arec.models.sasrec import SASRec, SASRecConfig
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from t2arec.models.tim4rec import TiM4Rec, TiM4RecConfig
from t2arec.models.ttt4rec import TTT4Rec, TTT4RecConfig

if TYPE_CHECKING:
    from t2arec.config import RunConfig


@dataclass(frozen=True)
class ModelSpec:
    config: type  # the model's config dataclass
    # (model config with num_items set, the whole run config) -> model; the run config supplies what a
    # model takes from other sections (T2ARec's training loss weights, the input length)
    build: Callable[[Any, "RunConfig"], SequentialRecommender]
    # [train] defaults chosen for this model on the validation split (docs/models.md, "Training regime"),
    # applied when the model is chosen; an explicit override still wins
    train_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, ModelSpec] = {
    "t2arec": ModelSpec(T2ARecConfig, lambda m, run: T2ARec(m, mu_time=run.train.mu_time, mu_state=run.train.mu_state)),
    "sasrec": ModelSpec(SASRecConfig, lambda m, run: SASRec(dataclasses.replace(m, max_len=run.data.max_len)),
                        train_defaults={"stride_fraction": 0.2}),
    "gru4rec": ModelSpec(GRU4RecConfig, lambda m, run: GRU4Rec(m)),
    "caser": ModelSpec(CaserConfig, lambda m, run: Caser(dataclasses.replace(m, window=min(m.window, run.data.max_len)))),
    "bert4rec": ModelSpec(BERT4RecConfig,
                          lambda m, run: BERT4Rec(dataclasses.replace(m, max_seq_length=run.data.max_len))),
    "mamba4rec": ModelSpec(Mamba4RecConfig, lambda m, run: Mamba4Rec(m)),
    "tim4rec": ModelSpec(TiM4RecConfig, lambda m, run: TiM4Rec(m), train_defaults={"stride_fraction": 0.2}),
    "ttt4rec": ModelSpec(TTT4RecConfig, lambda m, run: TTT4Rec(m), train_defaults={"stride_fraction": 0.2}),
}
MODEL_NAMES = tuple(REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(MODEL_NAMES)})")
    return REGISTRY[name]


def build_model(cfg: "RunConfig", num_items: int) -> SequentialRecommender:
    spec = model_spec(cfg.model_name)
    return spec.build(dataclasses.replace(cfg.model, num_items=num_items), cfg)


__all__ = ["SeqBatch", "SequentialRecommender", "T2ARec", "T2ARecConfig", "REGISTRY", "MODEL_NAMES",
           "build_model", "model_spec"]
