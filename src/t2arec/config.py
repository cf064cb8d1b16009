"""Typed configuration: dataclasses per concern, a TOML/JSON file and ``section.key=value`` overrides.

An unknown section or key is an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2arec.align import AlignConfig
from t2arec.models import model_spec
from t2arec.models.t2arec import T2ARecConfig


class ConfigError(ValueError):
    """A bad configuration value, key or file."""


@dataclass
class DataConfig:
    # a file, an archive (x.zip, x.zip:member, x.gz, x.zst) or a dataset name (t2arec datasets);
    # None: the built-in synthetic interest-shift dataset
    path: str | None = None
    format: str = "auto"  # auto | recbole | movielens | csv | parquet
    columns: dict[str, str] = field(default_factory=dict)  # {"user": ..., "item": ..., "time": ...}
    time_unit: str = "auto"  # auto | s | ms | datetime
    duplicates: str = "keep"  # keep | drop exact (user, item, time) duplicates
    min_count: int = 10  # k-core threshold for users and items
    max_len: int = 50
    synthetic_users: int = 1000
    synthetic_items: int = 600
    synthetic_shift: float = 1.0
    synthetic_seed: int = 0


@dataclass
class TrainConfig:
    """How a model is trained. Every quantity of work is counted in optimiser steps, never in epochs,
    because an epoch's size depends on the windowing and the dataset (docs/models.md, "Training regime")."""

    epochs: int = 1000  # cap on passes over the training windows (patience normally stops much earlier)
    batch_size: int = 32  # windows per step; chosen on ML-1M validation (docs/ml1m_regime.md)
    lr: float = 1e-3  # constant unless lr_decay < 1
    # learning-rate decay on a plateau (off by default): once ``lr_plateau_steps`` steps have gone by
    # without a better validation (counted from the best or from the last decay, whichever is later),
    # the learning rate is multiplied by ``lr_decay``
    lr_decay: float = 1.0
    lr_plateau_steps: int = 1000
    weight_decay: float = 0.0
    eval_steps: int = 200  # validate at every multiple of this many steps (at the end of the epoch it falls in, if that is shorter)
    # also validate inside epochs longer than eval_steps, at every multiple of it, so that patience
    # holds patience_steps / eval_steps validations whatever the epoch's length. Off, a long epoch
    # validates once, at its end: 2,000 steps of patience were only 3 validations at 855 steps per
    # epoch (docs/ml1m_regime.md, "Validations of patience"); the runs of the ML-1M and Amazon tables
    # were made that way (train.validate_within_epochs=false reproduces them)
    validate_within_epochs: bool = True
    patience_steps: int = 2000  # stop once this many optimiser steps have gone by without a better validation
    # and wait at least this fraction of the best validation's step as well: improvements come more
    # slowly the longer a model has trained, so a fixed window of steps, ample for a run that peaks
    # at step 3,000, stops one that peaks at step 15,000 on a noisy high (docs/ml1m_regime.md,
    # "Patience that grows with the run"): replayed on T2ARec's two ML-1M curves, 0.33 is the smallest
    # fraction that keeps each one's best validation, and it is inert for a run that peaks before step
    # 6,000 (ML-100K, Amazon Pantry but two runs). 0, the fixed patience, reproduces the runs stored before it
    patience_fraction: float = 0.33
    mu_time: float = 0.1  # mu1_train
    mu_state: float = 1.0  # mu2_train
    # targets per training window: each window holds the max_len interactions before its last target
    # and trains only its last ``stride`` positions, so every target sees at least max_len - stride
    # items of context. 0 = round(stride_fraction * max_len); models declare their fraction in the registry
    stride: int = 0
    stride_fraction: float = 1.0  # 1.0 = non-overlapping windows
    window_repeats: int = 1  # passes over every window per epoch (BERT4Rec: fresh Cloze masks each time)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    validate_aligned: bool = False  # early-stop on aligned (True) or unaligned validation NDCG@10

    def window_stride(self, max_len: int) -> int:
        """Targets per training window for inputs of ``max_len`` items."""
        return self.stride or min(max_len, max(1, round(self.stride_fraction * max_len)))


@dataclass
class RunConfig:
    model_name: str = "t2arec"
    seed: int = 2026
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=T2ARecConfig)  # the config dataclass of ``model_name``
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("data", "model", "train", "align")


def _parse_value(text: str, kind: Any, key: str) -> Any:
    """Turn the text of a ``key=value`` override into the field's declared type."""
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(kind)):
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_value(text, args[0], key)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    if origin is dict or kind is dict:
        return parse_mapping(text, key)
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        return tuple(_parse_value(part.strip(), item_kind, key) for part in text.split(",") if part.strip())
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {text!r}") from None


def parse_mapping(text: str, key: str = "columns") -> dict[str, str]:
    """``"user=uid,item=iid"`` -> {"user": "uid", "item": "iid"}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{key}: expected name=value pairs separated by commas, got {part!r}")
        mapping[name.strip()] = value.strip()
    return mapping


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check a value read from a TOML/JSON file against the field's type."""
    if isinstance(value, str) and kind is not str and typing.get_origin(kind) is not dict:
        return _parse_value(value, kind, key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def set_value(cfg: RunConfig, dotted: str, value: Any, from_text: bool) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, checking that it exists."""
    section, _, key = dotted.rpartition(".")
    target: Any = cfg
    if section:
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {dotted!r} (sections: {', '.join(SECTIONS)})")
        target = getattr(cfg, section)
    types = _field_types(target)
    if key not in types or key in ("data", "model", "train", "align"):
        known = ", ".join(k for k in types if k not in SECTIONS)
        raise ConfigError(f"unknown config key {dotted!r} (known: {known})")
    parsed = _parse_value(value, types[key], dotted) if from_text else _coerce(value, types[key], dotted)
    if target is cfg and key == "model_name" and parsed != cfg.model_name:
        try:  # a different model brings its own [model] section, with its defaults
            new_spec, old_spec = model_spec(parsed), model_spec(cfg.model_name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        cfg.model = new_spec.config()
        plain = TrainConfig()
        for name in old_spec.train_defaults:  # undo the previous model's training defaults
            setattr(cfg.train, name, getattr(plain, name))
        for name, value in new_spec.train_defaults.items():
            setattr(cfg.train, name, value)
    setattr(target, key, parsed)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> None:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        set_value(cfg, key.strip(), value.strip(), from_text=True)


def load_config_file(cfg: RunConfig, path: str | Path) -> None:
    """Apply a TOML or JSON file: top-level keys and [data]/[model]/[train]/[align] tables."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse config: {err}") from None
    for key, value in doc.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            for sub, sub_value in value.items():
                set_value(cfg, f"{key}.{sub}", sub_value, from_text=False)
        else:
            set_value(cfg, key, value, from_text=False)


def validate(cfg: RunConfig) -> None:
    """Re-run the dataclasses' own checks after overrides and cross-check a few values."""
    try:
        cfg.model = type(cfg.model)(**dataclasses.asdict(cfg.model))
        cfg.align = AlignConfig(**dataclasses.asdict(cfg.align))
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if cfg.data.max_len < 1:
        raise ConfigError("data.max_len must be >= 1")
    if cfg.train.stride < 0 or cfg.train.stride > cfg.data.max_len:
        raise ConfigError("train.stride must be in 0..data.max_len")
    if not 0.0 < cfg.train.stride_fraction <= 1.0:
        raise ConfigError("train.stride_fraction must be in (0, 1]")
    if cfg.train.eval_steps < 1 or cfg.train.patience_steps < 0 or cfg.train.window_repeats < 1:
        raise ConfigError("train.eval_steps and train.window_repeats must be >= 1, train.patience_steps >= 0")
    if not cfg.train.patience_fraction >= 0.0:  # also refuses nan
        raise ConfigError(f"train.patience_fraction must be >= 0, got {cfg.train.patience_fraction}")
    if not 0.0 < cfg.train.lr_decay <= 1.0 or cfg.train.lr_plateau_steps < 1:
        raise ConfigError(f"train.lr_decay must be in (0, 1] (got {cfg.train.lr_decay}) "
                          f"and train.lr_plateau_steps >= 1 (got {cfg.train.lr_plateau_steps})")
    if cfg.train.epochs < 1:
        raise ConfigError("train.epochs must be >= 1")
    if cfg.train.batch_size < 1 or cfg.align.batch_size < 1:
        raise ConfigError("batch sizes must be >= 1")
