"""Where experiment runs live and when a finished one may be reused.

Layout under ``--out``::

    runs/<label>/seed-<seed>/results.json, checkpoint     one training run (``t2arec run``)
    runs/<label>/seed-<seed>/variants/<name>.json          its checkpoint evaluated with other alignment
    <experiment>.json, <experiment>.md, <experiment>.png   what the command reports

``<label>`` is the model name followed by the overrides that distinguish the run, so two experiments
asking for the same configuration share one run. A folder is reused only when its stored
configuration equals the requested one; otherwise it is an error, never a silent mix.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from t2arec.align import AlignConfig
from t2arec.checkpoint import atomic_write
from t2arec.config import RunConfig, apply_overrides, validate
from t2arec.models import model_spec
from t2arec.pipeline import evaluate_variant, run, write_json
from t2arec.train import patience_after

METRICS = ("recall@10", "mrr@10", "ndcg@10")


class ExperimentError(ValueError):
    """An experiment cannot go on (for example its output folder holds a different run)."""


def _scope(override: str) -> str | None:
    """The model an override is scoped to (``sasrec:train.stride=10`` -> "sasrec"), else None."""
    head, sep, _ = override.partition("=")[0].partition(":")
    return head.strip() if sep else None


@dataclass
class Setup:
    """What every run of an experiment shares."""

    out: Path
    # section.key=value, applied to every run; MODEL:section.key=value to that model's runs only
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [2026])
    device: str = "cpu"
    progress: bool = True

    def common_overrides(self) -> list[str]:
        return [o for o in self.overrides if not _scope(o)]

    def scoped_overrides(self, model: str) -> tuple[str, ...]:
        """Overrides written ``MODEL:section.key=value`` apply to that model's runs only."""
        return tuple(o.partition(":")[2] for o in self.overrides if _scope(o) == model)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.seeds:
            raise ExperimentError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError(f"seeds must be distinct, got {self.seeds}")


@dataclass(frozen=True)
class Variant:
    """A model and the overrides (``section.key=value``) that set it apart from its defaults."""

    model: str
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return "+".join((self.model, *self.overrides))

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.+=-]", "_", self.label)


def build_config(setup: Setup, variant: Variant, seed: int) -> RunConfig:
    model_spec(variant.model)  # an unknown name fails here, before anything trains
    cfg = RunConfig()
    apply_overrides(cfg, [f"model_name={variant.model}", f"seed={seed}", f"device={setup.device}",
                          *setup.common_overrides(), *setup.scoped_overrides(variant.model), *variant.overrides])
    validate(cfg)
    return cfg


def _normalised(cfg: RunConfig) -> dict[str, Any]:
    """The config as it reads back from results.json (tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _default_config(model: str) -> dict[str, Any]:
    cfg = RunConfig()
    apply_overrides(cfg, [f"model_name={model}"])
    return _normalised(cfg)


def _differences(stored: dict[str, Any], wanted: dict[str, Any], defaults: dict[str, Any],
                 prefix: str = "") -> list[str]:
    """Keys whose values differ. A key the stored run lacks matches when the wanted value is the
    default: the run predates that option, and an option's default keeps the behaviour before it."""
    keys = sorted(set(stored) | set(wanted))
    diffs = []
    for key in keys:
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, defaults.get(key, {}), f"{prefix}{key}.")
        elif key not in stored and key in defaults and b == defaults[key]:
            continue
        elif a != b:
            diffs.append(f"{prefix}{key} ({a!r} there, {b!r} here)")
    return diffs


def as_the_run_behaved(stored: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """A stored run's configuration, with the options it predates filled in as the run behaved.

    The general rule of ``_differences`` (a missing key holds today's default) is false for an option
    whose default is not the behaviour before it, so each such option is filled in here:

    - ``train.validate_within_epochs``: its default changed from off to on after many runs were stored
      without it; those runs validated at epoch ends only. When none of their epochs was longer than
      ``train.eval_steps``, that is exactly what the option does too, so such a run matches either value.
    - ``train.patience_fraction``: a run stored without it waited ``train.patience_steps``, which is
      what a fraction ``f`` does as long as ``f`` times the step of the best validation is no longer
      (the best's step only grows, so the final best bounds every earlier one): such a run matches
      the wanted fraction, any other stopped as with fraction 0.
    """
    config = copy.deepcopy(stored.get("config", {}))
    train = config.get("train")
    if not isinstance(train, dict):
        return config
    if "validate_within_epochs" not in train:
        history = stored.get("history") or []
        first_epoch_steps = history[0].get("step") if history else None  # cumulative: the steps of one epoch
        eval_steps = train.get("eval_steps", wanted["train"]["eval_steps"])
        short_epochs = first_epoch_steps is not None and first_epoch_steps <= eval_steps
        train["validate_within_epochs"] = wanted["train"]["validate_within_epochs"] if short_epochs else False
    if "patience_fraction" not in train:
        fraction = wanted["train"]["patience_fraction"]
        patience = train.get("patience_steps", wanted["train"]["patience_steps"])
        best_step = stored.get("best_step")
        same_stop = best_step is not None and patience_after(best_step, patience, fraction) == patience
        train["patience_fraction"] = fraction if same_stop else 0.0
    return config


def run_dir(setup: Setup, variant: Variant, seed: int) -> Path:
    """Model-scoped overrides are part of the folder name, like the variant's own."""
    scoped = setup.scoped_overrides(variant.model)
    effective = Variant(variant.model, (*scoped, *variant.overrides)) if scoped else variant
    return setup.out / "runs" / effective.folder / f"seed-{seed}"


def ensure_run(setup: Setup, variant: Variant, seed: int) -> dict[str, Any]:
    """The results of one training run: read from its folder when finished, else trained now."""
    cfg = build_config(setup, variant, seed)
    directory = run_dir(setup, variant, seed)
    results_path = directory / "results.json"
    if results_path.exists():
        stored = json.loads(results_path.read_text())
        wanted = _normalised(cfg)
        stored_cfg = as_the_run_behaved(stored, wanted)
        if wanted["align"]["lr_grid"]:  # the run chose its own step size on validation
            wanted["align"]["lr"] = stored_cfg.get("align", {}).get("lr")
        diffs = _differences(stored_cfg, wanted, _default_config(variant.model))
        if diffs:
            raise ExperimentError(f"{directory} holds a run with another configuration, differing in "
                                  f"{'; '.join(diffs[:3])}; use another --out or remove that folder")
        return stored
    return run(cfg, directory, progress=setup.progress)


def ensure_runs(setup: Setup, variants: list[Variant], desc: str) -> dict[tuple[Variant, int], dict[str, Any]]:
    """Every (variant, seed) run, with a progress bar over runs and a line per finished one."""
    jobs = [(v, s) for v in variants for s in setup.seeds]
    results = {}
    with tqdm(jobs, desc=desc, unit="run", disable=not setup.progress) as bar:
        for variant, seed in bar:
            bar.set_postfix_str(f"{variant.label} seed {seed}")
            results[(variant, seed)] = ensure_run(setup, variant, seed)
            if setup.progress:
                res = results[(variant, seed)]
                bar.write(f"{variant.label} seed {seed}: test NDCG@10 {res['test']['ndcg@10']:.4f} "
                          f"(no TTA {res['test_no_tta']['ndcg@10']:.4f})")
    return results


def ensure_variant(setup: Setup, variant: Variant, seed: int, name: str, align: AlignConfig) -> dict[str, Any]:
    """A finished run's checkpoint evaluated with ``align`` (cached in ``variants/<name>.json``)."""
    directory = run_dir(setup, variant, seed)
    path = directory / "variants" / f"{re.sub(r'[^A-Za-z0-9_.=-]', '_', name)}.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(align)))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("align_config") == wanted:
            return stored
    results = evaluate_variant(directory, align, device=setup.device)
    results["align_config"] = wanted
    write_json(path, results)
    return results


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
