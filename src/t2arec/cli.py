"""The ``t2arec`` command: one sub-command per job. It parses, calls the library and prints."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from t2arec.config import ConfigError, RunConfig, apply_overrides, load_config_file, parse_mapping, validate
from t2arec.data.types import DatasetReport, DataError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="T2ARec: sequential recommendation with test-time alignment.")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def format_table(results: dict[str, Any]) -> str:
    """The results as a small text table: rows valid/test/test_no_tta and the four segments."""
    rows = [("valid", results.get("valid")), ("test", results["test"]), ("test_no_tta", results["test_no_tta"])]
    for seg in results["segments"]:
        rows.append((f"segment {seg['segment']} (tta)", seg["test"]))
        rows.append((f"segment {seg['segment']} (no tta)", seg["test_no_tta"]))
    keys = ["recall@10", "mrr@10", "ndcg@10"]
    lines = [f"{'':24s}" + "".join(f"{k:>11s}" for k in keys)]
    for name, metrics in rows:
        if metrics:
            lines.append(f"{name:24s}" + "".join(f"{metrics[k]:11.4f}" for k in keys))
    return "\n".join(lines)


def run_guarded(job: Any) -> Any:
    """Turn the errors a user can cause into one line on stderr and exit code 2."""
    try:
        return job()
    except (DataError, ConfigError, ValueError, FileNotFoundError) as err:  # the first two are ValueErrors too
        fail(str(err))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def run(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, help="Interaction file; omit for the built-in synthetic dataset."),
    format: str = typer.Option("auto", "--format", help="auto | recbole | movielens | csv | parquet"),
    columns: Optional[str] = typer.Option(None, help="Column mapping, e.g. user=uid,item=iid,time=ts"),
    time_unit: Optional[str] = typer.Option(None, help="auto | s | ms | datetime"),
    model: Optional[str] = typer.Option(None, help="Model name (default t2arec)."),
    max_len: Optional[int] = typer.Option(None, help="Maximum input length."),
    epochs: Optional[int] = typer.Option(None, help="Maximum training epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda"),
    config: Optional[Path] = typer.Option(None, help="TOML or JSON config file."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help="Test-time alignment (default on)."),
    out: Path = typer.Option(Path("runs/latest"), help="Output folder for results.json and checkpoint."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train and evaluate a model. Extra arguments are overrides: section.key=value
    (sections data, model, train, align; e.g. model.dropout=0.3 align.lr=1.0)."""
    from t2arec.pipeline import run as run_pipeline

    def job() -> dict[str, Any]:
        cfg = RunConfig()
        if config is not None:
            load_config_file(cfg, config)
        flags = {"data.path": str(data) if data else None, "data.format": format if format != "auto" else None,
                 "data.time_unit": time_unit, "model_name": model, "data.max_len": max_len,
                 "train.epochs": epochs, "train.batch_size": batch_size, "seed": seed, "device": device,
                 "align.enabled": align}
        for key, value in flags.items():
            if value is not None:
                apply_overrides(cfg, [f"{key}={value}"])
        if columns:
            cfg.data.columns = parse_mapping(columns)
        apply_overrides(cfg, list(ctx.args))
        validate(cfg)
        return run_pipeline(cfg, out, progress=not quiet)

    results = run_guarded(job)
    typer.echo(DatasetReport(**results["dataset"]).summary())
    typer.echo(f"best epoch {results['best_epoch']}, training {results['train_seconds']:.1f} s")
    typer.echo(format_table(results))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'checkpoint'}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by 't2arec run'."),
    data: Optional[Path] = typer.Option(None, help="Interaction file (default: the one it was trained on)."),
    format: Optional[str] = typer.Option(None, "--format", help="auto | recbole | movielens | csv | parquet"),
    columns: Optional[str] = typer.Option(None, help="Column mapping, e.g. user=uid,item=iid,time=ts"),
    batch_size: Optional[int] = typer.Option(None, help="Evaluation (and alignment) batch size."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help="Test-time alignment."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Path = typer.Option(Path("runs/evaluate"), help="Output folder for results.json."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Re-evaluate a saved model on the test split."""
    from t2arec.pipeline import evaluate_checkpoint

    changes = {"path": str(data) if data else None, "format": format,
               "columns": parse_mapping(columns) if columns else None,
               "batch_size": batch_size, "align": align, "device": device}
    results = run_guarded(lambda: evaluate_checkpoint(checkpoint, out, changes, progress=not quiet))
    typer.echo(DatasetReport(**results["dataset"]).summary())
    typer.echo(format_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
