"""The ``t2arec`` command: one sub-command per job. It parses, calls the library and prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from t2arec.config import ConfigError, RunConfig, apply_overrides, load_config_file, parse_mapping, validate
from t2arec.data.types import DatasetReport, DataError
from t2arec.models import MODEL_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="T2ARec: sequential recommendation with test-time alignment.")


DATA_HELP = ("Interaction file, archive (x.zip, x.zip:MEMBER, x.gz, x.zst) or dataset name from 't2arec datasets' "
             "(downloaded once into the cache); omit for the built-in synthetic dataset.")
ALIGN_HELP = ("Test-time alignment. Default: as the checkpoint says (the step chosen on validation, or none when "
              "no step's gain was significant); --align forces the stored step, --no-align turns it off.")
SCOPE_HELP = ("What one test-time step covers: 'batch' (one step per batch, the paper's Algorithm 1) or 'request' "
              "(every request its own step from the trained parameters, so its answer depends on it alone; "
              "in evaluation every user is a request).")


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
    data: Optional[str] = typer.Option(None, metavar="PATH|NAME", help=DATA_HELP),
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
    align: Optional[bool] = typer.Option(None, "--align/--no-align",
                                         help="Test-time alignment (default on: a step is chosen on validation, "
                                              "or none when no step's gain is significant)."),
    align_scope: Optional[str] = typer.Option(None, "--align-scope", metavar="batch|request",
                                              help=SCOPE_HELP + " Default: batch (align.scope)."),
    out: Path = typer.Option(Path("runs/latest"), help="Output folder for results.json and checkpoint."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train and evaluate a model. Extra arguments are overrides: section.key=value
    (sections data, model, train, align; e.g. model.dropout=0.3 align.lr=1.0).

    Under torchrun (torchrun --nproc-per-node N -m t2arec run ...) the N processes share training
    and evaluation; rank 0 prints and writes (docs/scaling.md)."""
    from t2arec import distributed
    from t2arec.pipeline import run as run_pipeline

    def job() -> dict[str, Any]:
        cfg = RunConfig()
        if config is not None:
            load_config_file(cfg, config)
        flags = {"data.path": str(data) if data else None, "data.format": format if format != "auto" else None,
                 "data.time_unit": time_unit, "model_name": model, "data.max_len": max_len,
                 "train.epochs": epochs, "train.batch_size": batch_size, "seed": seed, "device": device,
                 "align.enabled": align, "align.scope": align_scope}
        for key, value in flags.items():
            if value is not None:
                apply_overrides(cfg, [f"{key}={value}"])
        if columns:
            cfg.data.columns = parse_mapping(columns)
        apply_overrides(cfg, list(ctx.args))
        validate(cfg)
        stride = cfg.train.window_stride(cfg.data.max_len)

        def announce(data: Any) -> None:  # before training starts: a long run shows at once what was read
            if not distributed.is_main():
                return
            typer.echo(data.report.summary())
            typer.echo(f"training     {cfg.model_name}, max length {cfg.data.max_len}, {stride} targets per window")
            if distributed.world_size() > 1:
                typer.echo(f"processes    {distributed.world_size()}, {cfg.train.batch_size} windows per step "
                           "across them")

        with distributed.process_group(cfg.device):
            return run_pipeline(cfg, out, progress=not quiet, on_data=announce)

    results = run_guarded(job)
    if not distributed.is_main():
        return
    typer.echo(f"best at step {results['best_step']} (epoch {results['best_epoch']}) of {results['steps']}, "
               f"{results['training_windows']:,} training windows, training {results['train_seconds']:.1f} s")
    typer.echo(format_table(results))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'checkpoint'}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by 't2arec run'."),
    data: Optional[str] = typer.Option(None, metavar="PATH|NAME",
                                       help="Interaction file, archive or dataset name (default: the one it was "
                                            "trained on)."),
    format: Optional[str] = typer.Option(None, "--format", help="auto | recbole | movielens | csv | parquet"),
    columns: Optional[str] = typer.Option(None, help="Column mapping, e.g. user=uid,item=iid,time=ts"),
    batch_size: Optional[int] = typer.Option(None, help="Evaluation (and alignment) batch size."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help=ALIGN_HELP),
    align_scope: Optional[str] = typer.Option(None, "--align-scope", metavar="batch|request",
                                              help=SCOPE_HELP + " Default: the checkpoint's (batch unless it was "
                                                   "trained with request)."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Path = typer.Option(Path("runs/evaluate"), help="Output folder for results.json."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Re-evaluate a saved model on the test split."""
    from t2arec.pipeline import evaluate_checkpoint

    changes = {"path": str(data) if data else None, "format": format,
               "columns": parse_mapping(columns) if columns else None,
               "batch_size": batch_size, "align": align, "align_scope": align_scope, "device": device}
    results = run_guarded(lambda: evaluate_checkpoint(checkpoint, out, changes, progress=not quiet))
    typer.echo(DatasetReport(**results["dataset"]).summary())
    typer.echo(format_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


# Options shared by the experiment commands (one definition, reused by each command's signature).
DATA_OPT = typer.Option(None, metavar="PATH|NAME", help=DATA_HELP)
FORMAT_OPT = typer.Option("auto", "--format", help="auto | recbole | movielens | csv | parquet")
MAX_LEN_OPT = typer.Option(None, help="Maximum input length.")
EPOCHS_OPT = typer.Option(None, help="Maximum training epochs per run.")
SEEDS_HELP = ("How many seeds (3 = seeds 2026, 2027, 2028) or which, comma-separated (2026,1,2; a single seed "
              "as 7,).")
SEEDS_OPT = typer.Option("1", help=SEEDS_HELP)
FIRST_SEED = 2026
DEVICE_OPT = typer.Option("cpu", help="cpu | cuda")
QUIET_OPT = typer.Option(False, help="No progress bars.")
MODELS_HELP = "Comma-separated model names (" + ", ".join(MODEL_NAMES) + ")."
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": False}


def parse_list(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--{name}: expected comma-separated {kind.__name__} values, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name}: give at least one value")
    return values


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> [2026, 2027, 2028] (a count); ``"2026,1,2"`` or ``"7,"`` -> those seeds."""
    if "," not in text:
        count = parse_list(text, int, "seeds")[0]
        if count < 1:
            raise ConfigError(f"--seeds: a count of seeds must be >= 1, got {count}")
        return [FIRST_SEED + i for i in range(count)]
    return parse_list(text, int, "seeds")


def experiment_setup(ctx: typer.Context, out: Path, data: Optional[str], format: str, max_len: Optional[int],
                     epochs: Optional[int], seeds: str, device: str, quiet: bool) -> Any:
    """The Setup every experiment command builds from the shared options and key=value overrides."""
    from t2arec.experiments import Setup

    overrides = []
    if data is not None:
        overrides.append(f"data.path={data}")
    if format != "auto":
        overrides.append(f"data.format={format}")
    if max_len is not None:
        overrides.append(f"data.max_len={max_len}")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    overrides += list(ctx.args)
    # fail early on typos: unscoped data/train/align keys here, model keys when each run is built
    apply_overrides(RunConfig(), [o for o in overrides if not o.startswith("model.") and ":" not in o.split("=")[0]])
    return Setup(out=out, overrides=overrides, seeds=parse_seeds(seeds), device=device,
                 progress=not quiet)


def echo_written(out: Path, names: list[str]) -> None:
    typer.echo("wrote " + ", ".join(str(out / n) for n in names))


@app.command(context_settings=EXTRA)
def compare(ctx: typer.Context,
            models: str = typer.Option("caser,gru4rec,bert4rec,sasrec,mamba4rec,tim4rec,ttt4rec,t2arec",
                                       help=MODELS_HELP),
            seeds: str = typer.Option("3", help=SEEDS_HELP),
            data: Optional[str] = DATA_OPT, format: str = FORMAT_OPT, max_len: Optional[int] = MAX_LEN_OPT,
            epochs: Optional[int] = EPOCHS_OPT, device: str = DEVICE_OPT,
            out: Path = typer.Option(Path("runs/compare"), help="Output folder (finished runs are reused)."),
            quiet: bool = QUIET_OPT) -> None:
    """Table 2: every model over several seeds, mean ± std and a paired t-test. Extra arguments are
    section.key=value overrides applied to every run."""
    from t2arec.experiments import compare as run_compare
    from t2arec.experiments.compare import to_markdown

    def job() -> Any:
        setup = experiment_setup(ctx, out, data, format, max_len, epochs, seeds, device, quiet)
        return run_compare(setup, parse_list(models, str, "models"))

    typer.echo(to_markdown(run_guarded(job), "Overall performance (Table 2)"))
    echo_written(out, ["compare.json", "compare.md"])


@app.command(context_settings=EXTRA)
def ablate(ctx: typer.Context, seeds: str = SEEDS_OPT,
           data: Optional[str] = DATA_OPT, format: str = FORMAT_OPT, max_len: Optional[int] = MAX_LEN_OPT,
           epochs: Optional[int] = EPOCHS_OPT, device: str = DEVICE_OPT,
           out: Path = typer.Option(Path("runs/ablate"), help="Output folder (finished runs are reused)."),
           quiet: bool = QUIET_OPT) -> None:
    """Table 3: T2ARec without L_time, L_state or both, in training and at test time."""
    from t2arec.experiments import ablate as run_ablate
    from t2arec.experiments.ablate import to_markdown

    def job() -> Any:
        return run_ablate(experiment_setup(ctx, out, data, format, max_len, epochs, seeds, device, quiet))

    typer.echo(to_markdown(run_guarded(job), "Ablation (Table 3)"))
    echo_written(out, ["ablate.json", "ablate.md"])


@app.command(context_settings=EXTRA)
def sweep(ctx: typer.Context, seeds: str = SEEDS_OPT,
          train_grid: str = typer.Option("0,0.01,0.1,1,10", help="Training weights for mu1 and mu2 (Figure 6)."),
          test_grid: str = typer.Option("0,0.001,0.01,0.1,1", help="Test-time weights for mu1 and mu2 (Figure 7)."),
          phases: str = typer.Option("train,test", help="Which sweeps: train, test or both."),
          data: Optional[str] = DATA_OPT, format: str = FORMAT_OPT, max_len: Optional[int] = MAX_LEN_OPT,
          epochs: Optional[int] = EPOCHS_OPT, device: str = DEVICE_OPT,
          out: Path = typer.Option(Path("runs/sweep"), help="Output folder (finished runs are reused)."),
          quiet: bool = QUIET_OPT) -> None:
    """Figures 6 and 7: T2ARec's loss weights in training and at test time, one at a time."""
    from t2arec.experiments import sweep as run_sweep
    from t2arec.experiments.sweep import to_markdown

    def job() -> Any:
        chosen = parse_list(phases, str, "phases")
        if not set(chosen) <= {"train", "test"}:
            raise ConfigError(f"--phases: expected train and/or test, got {phases!r}")
        setup = experiment_setup(ctx, out, data, format, max_len, epochs, seeds, device, quiet)
        return run_sweep(setup, train_grid=parse_list(train_grid, float, "train-grid"),
                         test_grid=parse_list(test_grid, float, "test-grid"), phases=chosen), setup.seeds

    result, used_seeds = run_guarded(job)
    typer.echo(to_markdown(result, used_seeds))
    echo_written(out, ["sweep.json", "sweep.md"] + [f"sweep_{p}.png" for p in ("train", "test") if p in result])


@app.command(context_settings=EXTRA)
def segments(ctx: typer.Context, models: str = typer.Option("tim4rec,ttt4rec,t2arec", help=MODELS_HELP),
             seeds: str = typer.Option("3", help=SEEDS_HELP),
             data: Optional[str] = DATA_OPT, format: str = FORMAT_OPT, max_len: Optional[int] = MAX_LEN_OPT,
             epochs: Optional[int] = EPOCHS_OPT, device: str = DEVICE_OPT,
             out: Path = typer.Option(Path("runs/compare"), help="Output folder (finished runs are reused)."),
             quiet: bool = QUIET_OPT) -> None:
    """Figures 2 and 5: NDCG@10 per interest-shift segment of the test users, per model."""
    from t2arec.experiments import segments as run_segments
    from t2arec.experiments.segments import to_markdown

    def job() -> Any:
        setup = experiment_setup(ctx, out, data, format, max_len, epochs, seeds, device, quiet)
        return run_segments(setup, parse_list(models, str, "models"))

    typer.echo(to_markdown(run_guarded(job)))
    echo_written(out, ["segments.json", "segments.md", "segments.png"])


@app.command(context_settings=EXTRA)
def throughput(ctx: typer.Context,
               models: str = typer.Option("sasrec,mamba4rec,tim4rec,ttt4rec,t2arec", help=MODELS_HELP),
               batch_size: int = typer.Option(4096, help="Test users per iteration."),
               iterations: int = typer.Option(5, help="Timed iterations per model (the median is reported)."),
               warmup: int = typer.Option(1, help="Untimed iterations first."),
               data: Optional[str] = DATA_OPT, format: str = FORMAT_OPT, max_len: Optional[int] = MAX_LEN_OPT,
               device: str = DEVICE_OPT,
               out: Path = typer.Option(Path("runs/throughput"), help="Output folder."),
               quiet: bool = QUIET_OPT) -> None:
    """Table 4: test-time iterations per second per model, T2ARec with and without alignment."""
    from t2arec.experiments import throughput as run_throughput
    from t2arec.experiments.throughput import to_markdown

    def job() -> Any:
        if batch_size < 1 or iterations < 1 or warmup < 0:
            raise ConfigError("--batch-size and --iterations must be >= 1, --warmup >= 0")
        setup = experiment_setup(ctx, out, data, format, max_len, None, "1", device, quiet)
        return run_throughput(setup, parse_list(models, str, "models"), batch_size, iterations, warmup)

    typer.echo(to_markdown(run_guarded(job)))
    echo_written(out, ["throughput.json", "throughput.md", "throughput.png"])


@app.command()
def datasets(as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """The public datasets --data accepts by name: size, check, licence and source. T2AREC_HOME sets the cache."""
    from t2arec.data.datasets import cache_dir, format_listing, listing

    rows = listing()
    if as_json:
        typer.echo(json.dumps({"cache": str(cache_dir()), "datasets": rows}, indent=2))
        return
    typer.echo(format_listing(rows))
    typer.echo(f"cache: {cache_dir()} (set T2AREC_HOME to change it); check: what is verified after a download")


@app.command()
def recommend(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by 't2arec run'."),
    input: Path = typer.Option(..., "--input", help='JSON lines, one user each: {"items": [...], '
                               '"timestamps": [...], "now": t} (Unix seconds; an optional "id" is copied).'),
    output: Optional[Path] = typer.Option(None, help="Output JSON lines, written atomically (default: stdout)."),
    k: int = typer.Option(10, "--k", help="Items per user."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help=ALIGN_HELP),
    align_scope: str = typer.Option("request", "--align-scope", metavar="batch|request",
                                    help=SCOPE_HELP + " Here a request is one input line."),
    exclude_seen: bool = typer.Option(False, "--exclude-seen", help="Never recommend an item of the history."),
    strict: bool = typer.Option(False, "--strict", help="Unknown item ids are an error instead of skipped."),
    batch_size: Optional[int] = typer.Option(None, help="Users per model call (and per alignment step with "
                                             "--align-scope batch; default: the checkpoint's align.batch_size, "
                                             "as in evaluation)."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
) -> None:
    """Top-k raw item ids for every line of a JSON-lines file, one JSON line out per line in."""
    from t2arec.serve import Recommender
    from t2arec.serve.jsonl import recommend_file

    lines = run_guarded(lambda: recommend_file(Recommender.load(checkpoint, device, align=align, scope=align_scope),
                                               input, output, k=k, align=align is not False,
                                               exclude_seen=exclude_seen, strict=strict, batch_size=batch_size))
    if output is None:
        for line in lines:
            typer.echo(line)
    else:
        typer.echo(f"wrote {len(lines)} recommendations to {output}", err=True)


@app.command()
def serve(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by 't2arec run'."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_batch_users: int = typer.Option(64, help="Users per micro-batch (one model call)."),
    max_wait_ms: float = typer.Option(5.0, help="How long a micro-batch waits for more requests."),
    max_users: int = typer.Option(256, help="Users per request."),
    max_history: int = typer.Option(1000, help="Interactions per user."),
    max_body_bytes: int = typer.Option(1_048_576, help="Larger request bodies get 413."),
    max_k: int = typer.Option(100, help="Largest k a request may ask for."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help=ALIGN_HELP),
    align_scope: str = typer.Option("request", "--align-scope", metavar="batch|request",
                                    help=SCOPE_HELP + " Here a request is one POST /recommend body."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Serve a checkpoint over HTTP: POST /recommend, GET /health, GET /metadata, GET /docs."""
    import uvicorn

    from t2arec.serve import Recommender
    from t2arec.serve.app import ServeSettings, create_app

    def job() -> Any:
        settings = ServeSettings(max_batch_users=max_batch_users, max_wait_ms=max_wait_ms, max_users=max_users,
                                 max_history=max_history, max_body_bytes=max_body_bytes, max_k=max_k)
        return create_app(Recommender.load(checkpoint, device, align=align, scope=align_scope), settings)

    application = run_guarded(job)
    uvicorn.run(application, host=host, port=port, access_log=access_log, log_level="info")


def main() -> None:
    from t2arec.runtime import flush_denormals, keep_freed_memory

    keep_freed_memory()  # long jobs reuse freed memory instead of faulting fresh pages at every step
    flush_denormals()  # weights decaying towards zero must not slow training down (runtime.py)
    app()


if __name__ == "__main__":
    sys.exit(main())
