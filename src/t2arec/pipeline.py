"""One job end to end: data -> model -> training -> evaluation -> results.json + checkpoint.

The CLI and the experiment commands call these functions; they print nothing themselves beyond
progress bars, and every file they write is written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from t2arec import distributed
from t2arec.align import AlignConfig, alignment_runs
from t2arec.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from t2arec.config import DataConfig, RunConfig, TrainConfig, validate
from t2arec.data.batching import Examples, evaluation_examples, training_windows
from t2arec.data.datasets import resolve_data
from t2arec.data.prepare import prepare
from t2arec.data.readers import read_interactions
from t2arec.data.synthetic import make_synthetic
from t2arec.data.types import DataError, SequenceData
from t2arec.evaluate import EvalResult, evaluate, select_alignment_lr, time_segments
from t2arec.models import build_model, model_spec
from t2arec.models.base import SequentialRecommender
from t2arec.train import train

SEGMENTS = 4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The torch device named; under torchrun, ``cuda`` is this process's own GPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    return distributed.local_device(name)


def load_data(cfg: RunConfig, progress: bool = False) -> SequenceData:
    """Read (or generate) and prepare the interactions named by ``cfg.data``.

    ``data.path`` may be a file, an archive or a known dataset's name (``t2arec datasets``), which is
    downloaded into the cache the first time (with a progress bar when ``progress``). The config keeps
    the name, so a checkpoint trained on ``ml-1m`` finds its data again through the cache.
    """
    data_cfg = cfg.data
    if data_cfg.path is None:
        interactions = make_synthetic(num_users=data_cfg.synthetic_users, num_items=data_cfg.synthetic_items,
                                      shift=data_cfg.synthetic_shift, seed=data_cfg.synthetic_seed)
        name = f"synthetic-shift{data_cfg.synthetic_shift:g}"
    else:
        ref = resolve_data(data_cfg.path, progress=progress)
        fmt = data_cfg.format if data_cfg.format != "auto" else ref.fmt
        interactions = read_interactions(ref.path, fmt=fmt, columns=data_cfg.columns or None,
                                         time_unit=data_cfg.time_unit, duplicates=data_cfg.duplicates,
                                         member=ref.member, fields=ref.fields if fmt == ref.fmt else None)
        name = ref.name
    return prepare(interactions, name=name, min_count=data_cfg.min_count)


@dataclass
class Evaluation:
    """Aligned and unaligned test results with the segment split they share."""

    aligned: EvalResult | None
    unaligned: EvalResult
    segments: list[np.ndarray]
    target_times: np.ndarray


def evaluate_split(model: SequentialRecommender, examples: Examples, align: AlignConfig,
                   device: torch.device, progress: bool = False) -> Evaluation:
    unaligned = evaluate(model, examples, None, batch_size=align.batch_size, device=device, progress=progress)
    aligned = None
    if alignment_runs(model, align):
        aligned = evaluate(model, examples, align, batch_size=align.batch_size, device=device, progress=progress)
    return Evaluation(aligned, unaligned, time_segments(examples.target_times, SEGMENTS), examples.target_times)


def results_block(ev: Evaluation, align: AlignConfig, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``test``/``test_no_tta``/``segments``/``alignment`` part of results.json.

    ``align`` is the configuration test ran with; ``chosen`` says which step was chosen and why
    (``AlignmentChoice.to_dict``); without it the record only says whether a step ran.
    """
    applied = ev.aligned is not None
    aligned = ev.aligned or ev.unaligned
    seg_aligned = aligned.segment_metrics(ev.segments)
    seg_plain = ev.unaligned.segment_metrics(ev.segments)
    segments = []
    for i, idx in enumerate(ev.segments):
        times = ev.target_times[idx]
        segments.append({"segment": i + 1, "users": int(len(idx)),
                         "from_time": float(times.min()) if len(idx) else None,
                         "to_time": float(times.max()) if len(idx) else None,
                         "test": seg_aligned[i], "test_no_tta": seg_plain[i]})
    shifts = ev.aligned.param_shift if ev.aligned else []
    if chosen is None:
        chosen = {"lr": align.lr if applied else None, "reason": "as configured, no choice made here"}
    return {
        "test": aligned.metrics,
        "test_no_tta": ev.unaligned.metrics,
        "segments": segments,
        "alignment": {"applied": applied, "chosen": chosen, "optimizer": align.optimizer,
                      "lr": align.lr if applied else None,  # the step test used; None: no step
                      "steps": align.steps, "mu_time": align.mu_time, "mu_state": align.mu_state,
                      "batch_size": align.batch_size, "scope": align.scope,
                      "param_shift_mean": float(np.mean(shifts)) if shifts else 0.0,
                      "seconds": ev.aligned.seconds if ev.aligned else 0.0,
                      "seconds_no_tta": ev.unaligned.seconds},
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=str).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))


TRAIN_STATE = "train_state.pt"


def training_fingerprint(cfg: RunConfig, data: SequenceData) -> dict[str, Any]:
    """What a resumed training must share with the interrupted one: everything that shapes training
    (model, data, training settings, seed, device), not the test-time alignment chosen after it
    (unless validation itself aligns). Its patience may differ: ``train.train`` checks that part
    against the state's own validations."""
    config = cfg.to_dict()
    if not cfg.train.validate_aligned:
        config.pop("align")
    return json.loads(json.dumps({"config": config, "dataset": data.report.to_dict()}, default=str))


def run(cfg: RunConfig, out_dir: str | Path, progress: bool = True,
        on_data: Callable[[SequenceData], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one model; write ``out_dir/results.json`` and ``out_dir/checkpoint``.

    Training resumes from ``out_dir/train_state.pt`` when an earlier call with the same configuration
    was interrupted; the state is removed once the results are written. ``on_data`` is called with the
    prepared data before training starts (the CLI prints its summary).

    Under torchrun (``distributed.process_group``) every process calls this: training and evaluation
    are shared, every process returns the same results, and rank 0 alone shows progress and writes.
    """
    validate(cfg)
    main = distributed.is_main()
    progress = progress and main
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    data = load_data(cfg, progress=progress)
    if on_data is not None:
        on_data(data)
    max_len = cfg.data.max_len
    windows = training_windows(data, max_len, cfg.train.window_stride(max_len))
    valid = evaluation_examples(data, "valid", max_len)
    test = evaluation_examples(data, "test", max_len)

    seed_everything(cfg.seed)
    model = build_model(cfg, data.num_items).to(device)
    fingerprint = training_fingerprint(cfg, data)
    state_path = out_dir / TRAIN_STATE
    trained = train(model, windows, valid, cfg.train, cfg.align, seed=cfg.seed, device=device, progress=progress,
                    state_path=state_path, fingerprint=fingerprint)
    # the step (or no step) is chosen on validation only; the test split takes no part in it
    choice = select_alignment_lr(model, valid, cfg.align, device)
    cfg.align.lr = choice.candidate  # results' config: alignment as asked for, with the step it settled on
    used = choice.config(cfg.align)  # as test runs it: off when no step was chosen
    valid_ev = evaluate_split(model, valid, used, device)
    training = {"best_epoch": trained.best_epoch, "best_step": trained.best_step, "steps": trained.steps,
                "train_seconds": trained.train_seconds,
                "valid": (valid_ev.aligned or valid_ev.unaligned).metrics, "valid_no_tta": valid_ev.unaligned.metrics}
    # the checkpoint holds the configuration as used, so evaluate/recommend/serve follow the choice
    if main:
        save_checkpoint(out_dir / "checkpoint", model, {**cfg.to_dict(), "align": dataclasses.asdict(used)},
                        data.item_ids, data.report.to_dict(), training)
    test_ev = evaluate_split(model, test, used, device, progress=progress)
    results = {
        "model": cfg.model_name,
        "dataset": data.report.to_dict(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "training_windows": len(windows),
        **training,
        **results_block(test_ev, used, choice.to_dict()),
        "alignment_selection": choice.rows,
        "history": trained.history,
    }
    if main:
        write_json(out_dir / "results.json", results)
        state_path.unlink(missing_ok=True)
    distributed.barrier()  # no process moves on (and looks for these files) before they are written
    return results


def remap_items(data: SequenceData, item_ids: list) -> SequenceData:
    """Re-index ``data``'s items into a checkpoint's vocabulary; unknown items are an error."""
    if list(data.item_ids) == list(item_ids):
        return data
    index = {raw: i for i, raw in enumerate(item_ids) if i > 0}
    lookup = np.zeros(len(data.item_ids), dtype=np.int64)
    unknown = []
    for i, raw in enumerate(data.item_ids[1:], start=1):
        lookup[i] = index.get(raw, 0)
        if lookup[i] == 0:
            unknown.append(raw)
    if unknown:
        raise DataError(f"{data.report.source}: {len(unknown)} item ids are not in the checkpoint's vocabulary "
                        f"(first: {unknown[:5]})")
    return dataclasses.replace(data, items=[lookup[s] for s in data.items], item_ids=list(item_ids))


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """The inverse of ``RunConfig.to_dict`` (as stored in a checkpoint)."""
    return RunConfig(model_name=raw["model_name"], seed=raw["seed"], device=raw["device"],
                     data=DataConfig(**raw["data"]), model=model_spec(raw["model_name"]).config(**raw["model"]),
                     train=TrainConfig(**raw["train"]), align=AlignConfig(**raw["align"]))


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[SequentialRecommender, RunConfig, dict[str, Any]]:
    payload = load_checkpoint(checkpoint)
    cfg = config_from_dict(payload["config"])
    model = build_model(cfg, len(payload["item_ids"]) - 1)
    model.load_state_dict(payload["state_dict"])
    return model.to(resolve_device(device)).eval(), cfg, payload


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path, cfg_changes: dict[str, Any],
                        progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a saved model on its own data (or other data with the same item vocabulary)."""
    model, cfg, payload = load_model(checkpoint, cfg_changes.get("device", "cpu"))
    for key in ("path", "format", "columns", "time_unit"):
        if cfg_changes.get(key) is not None:
            setattr(cfg.data, key, cfg_changes[key])
    if cfg_changes.get("batch_size"):
        cfg.align.batch_size = cfg_changes["batch_size"]
    if cfg_changes.get("align") is not None:  # --align forces the stored step even when none was chosen
        cfg.align.enabled = cfg_changes["align"]
    if cfg_changes.get("align_scope") is not None:
        cfg.align.scope = cfg_changes["align_scope"]
    validate(cfg)  # the changes above (an unknown scope, a batch size below 1) are refused here
    device = resolve_device(cfg_changes.get("device", "cpu"))
    data = remap_items(load_data(cfg, progress=progress), payload["item_ids"])
    test = evaluation_examples(data, "test", cfg.data.max_len)
    test_ev = evaluate_split(model, test, cfg.align, device, progress=progress)
    applied = test_ev.aligned is not None
    source = {True: "forced by --align", False: "turned off by --no-align"}.get(
        cfg_changes.get("align"), "the checkpoint's align config (the choice made on validation when it was trained)")
    chosen = {"lr": cfg.align.lr if applied else None, "reason": f"{source}: {'step' if applied else 'no step'}"}
    results = {"model": cfg.model_name, "dataset": data.report.to_dict(), "config": cfg.to_dict(),
               "seed": cfg.seed, **payload["training"], "checkpoint": str(checkpoint),
               **results_block(test_ev, cfg.align, chosen)}
    write_json(Path(out_dir) / "results.json", results)
    return results


def evaluate_variant(run_dir: str | Path, align: AlignConfig, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a finished run's checkpoint with another test-time alignment setting.

    The step (or no step) is chosen on the validation split from ``align.lr_grid`` exactly as ``run``
    chooses it (``align.lr`` is used untested when the grid is empty), so a variant is judged like a
    trained model. ``align_used`` in the result is the configuration test ran with.
    """
    model, cfg, payload = load_model(Path(run_dir) / "checkpoint", device)
    torch_device = resolve_device(device)
    data = remap_items(load_data(cfg), payload["item_ids"])
    valid = evaluation_examples(data, "valid", cfg.data.max_len)
    test = evaluation_examples(data, "test", cfg.data.max_len)
    choice = select_alignment_lr(model, valid, align, torch_device)
    used = choice.config(align)
    valid_ev = evaluate_split(model, valid, used, torch_device)
    test_ev = evaluate_split(model, test, used, torch_device)
    return {"model": cfg.model_name, "seed": cfg.seed, "checkpoint": str(Path(run_dir) / "checkpoint"),
            "valid": (valid_ev.aligned or valid_ev.unaligned).metrics, "valid_no_tta": valid_ev.unaligned.metrics,
            **results_block(test_ev, used, choice.to_dict()), "alignment_selection": choice.rows,
            "align_used": json.loads(json.dumps(dataclasses.asdict(used))),
            # per test user, so that a variant can be compared with another on the same users
            "test_ranks": (test_ev.aligned or test_ev.unaligned).ranks.tolist(),
            "test_no_tta_ranks": test_ev.unaligned.ranks.tolist()}


def store_align_in_checkpoint(checkpoint: str | Path, align: dict[str, Any]) -> None:
    """Rewrite the ``align`` section of a checkpoint's config (atomically), weights untouched."""
    payload = load_checkpoint(checkpoint)
    payload["config"]["align"] = align
    atomic_write(checkpoint, lambda handle: torch.save(payload, handle))


def refresh_evaluation(run_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Re-run the evaluation part of ``run`` on a finished run's checkpoint and rewrite its results.json.

    Training results (epochs, losses, time) are kept; the step-size choice, validation and test
    figures are recomputed with the current evaluator and selection rule (for example after an
    evaluation fix), and the checkpoint's align config is updated to the new choice so that
    evaluate/recommend/serve follow it.
    """
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    asked = results["config"]["align"]  # alignment as the run asked for it (``enabled`` before the choice)
    align = AlignConfig(**{**asked, "lr_grid": tuple(asked["lr_grid"])})
    fresh = evaluate_variant(run_dir, align, device)
    for key in ("valid", "valid_no_tta", "test", "test_no_tta", "segments", "alignment", "alignment_selection"):
        results[key] = fresh[key]
    # the whole current [align] section: fields added since the run (at their defaults) are recorded too
    results["config"]["align"] = {**json.loads(json.dumps(dataclasses.asdict(align))), "lr": fresh["align_used"]["lr"]}
    store_align_in_checkpoint(run_dir / "checkpoint", {**fresh["align_used"], "lr_grid": align.lr_grid})
    write_json(run_dir / "results.json", results)
    return results
