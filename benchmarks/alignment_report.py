"""Training curves and the effect of test-time alignment, from one `t2arec run` output folder.

    t2arec run --data ../shared/data/ml-100k.inter --max-len 50 --out runs/ml100k
    python benchmarks/alignment_report.py --run runs/ml100k --out docs --name ml100k

Writes ``OUT/NAME_losses.png`` (L_rec, L_time, L_state and validation NDCG@10 per epoch) and
``OUT/NAME_alignment.md`` (metrics with and without alignment at the paper's step size and at the
step size chosen on validation, how far the step moves parameters and scores, the validation grid,
and a step-size curve ``OUT/NAME_alignment.png``). Test numbers for the other step sizes are shown
for reading only; the choice is made on validation alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from t2arec.align import AlignConfig, score_batch  # noqa: E402
from t2arec.data.batching import evaluation_examples  # noqa: E402
from t2arec.evaluate import evaluate  # noqa: E402
from t2arec.pipeline import load_data, load_model, remap_items  # noqa: E402

PAPER = AlignConfig(lr=0.005, mu_time=1e-2, mu_state=1e-1, steps=1, optimizer="sgd")


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    panels = [("loss_rec", "L_rec"), ("loss_time", "L_time"), ("loss_state", "L_state"), ("valid_ndcg@10", "valid NDCG@10")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, label) in zip(axes, panels):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], marker=".", color="tab:blue")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_change(model, examples, align: AlignConfig, batch_size: int) -> float:
    """Mean absolute change of the scores caused by alignment, relative to the scores' std."""
    changes = []
    for begin in range(0, len(examples), batch_size):
        batch = examples.batch(slice(begin, begin + batch_size))
        plain, _ = score_batch(model, batch, None)
        adapted, _ = score_batch(model, batch, align)
        changes.append(float((adapted - plain).abs().mean() / plain.std()))
    return float(np.mean(changes))


def row(name: str, valid: dict, test: dict, shift: float, change: float) -> str:
    return (f"| {name} | {valid['ndcg@10']:.4f} | {test['recall@10']:.4f} | {test['mrr@10']:.4f} | "
            f"{test['ndcg@10']:.4f} | {shift:.2e} | {change:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="folder written by `t2arec run`")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--name", default="ml100k")
    parser.add_argument("--command", default="", help="the command that produced --run, printed in the report")
    args = parser.parse_args()
    torch.set_grad_enabled(True)

    results = json.loads((args.run / "results.json").read_text())
    model, cfg, payload = load_model(args.run / "checkpoint")
    data = remap_items(load_data(cfg), payload["item_ids"])
    valid = evaluation_examples(data, "valid", cfg.data.max_len)
    test = evaluation_examples(data, "test", cfg.data.max_len)
    bs = cfg.align.batch_size
    args.out.mkdir(parents=True, exist_ok=True)
    plot_losses(results["history"], args.out / f"{args.name}_losses.png", f"T2ARec training on {args.name}")

    no_valid, no_test = evaluate(model, valid, None, bs), evaluate(model, test, None, bs)
    chosen = dataclasses.replace(cfg.align, enabled=True)  # forced even when the run chose no step
    verdict = "chosen" if results["alignment"]["applied"] else "not significant, forced here"
    settings = [("paper: SGD, alpha 0.005, mu 1e-2/1e-1", PAPER),
                (f"best on validation ({verdict}): SGD, alpha {chosen.lr:g}", chosen),
                ("Adam, lr 1e-3 (spec's prototype)", dataclasses.replace(PAPER, optimizer="adam", lr=1e-3))]
    lines = [f"# Test-time alignment on {args.name}", "",
             f"Produced by `{args.command}` then "
             f"`python benchmarks/alignment_report.py --run {args.run} --out {args.out} --name {args.name}`.",
             f"Alignment batch size {bs} (the update is shared by the batch); test users: {len(test)}.", "",
             f"![losses]({args.name}_losses.png)", "",
             "| setting | valid NDCG@10 | test R@10 | test MRR@10 | test NDCG@10 | param shift (L2) | score change (mean abs / std) |",
             "|---|---|---|---|---|---|---|",
             row("no alignment", no_valid.metrics, no_test.metrics, 0.0, 0.0)]
    for name, align in settings:
        v, t = evaluate(model, valid, align, bs), evaluate(model, test, align, bs)
        lines.append(row(name, v.metrics, t.metrics, float(np.mean(t.param_shift)), score_change(model, test, align, bs)))

    grid = sorted(set(cfg.align.lr_grid) | {0.005, 20.0, 50.0})
    curve = []
    for lr in grid:
        align = dataclasses.replace(chosen, lr=lr)
        v, t = evaluate(model, valid, align, bs), evaluate(model, test, align, bs)
        curve.append((lr, v.metrics["ndcg@10"], t.metrics["ndcg@10"], float(np.mean(t.param_shift))))
    lines += ["", "Step-size grid (plain gradient, the run's mu_test); the run chose the step with the best validation NDCG@10:", "",
              "| alpha | valid NDCG@10 | test NDCG@10 | param shift |", "|---|---|---|---|"]
    lines += [f"| {lr:g} | {v:.4f} | {t:.4f} | {s:.2e} |" for lr, v, t, s in curve]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.semilogx([c[0] for c in curve], [c[1] for c in curve], marker="o", label="validation")
    ax.semilogx([c[0] for c in curve], [c[2] for c in curve], marker="s", label="test")
    ax.axhline(no_valid.metrics["ndcg@10"], ls="--", color="tab:blue", alpha=0.6, label="validation, no alignment")
    ax.axhline(no_test.metrics["ndcg@10"], ls="--", color="tab:orange", alpha=0.6, label="test, no alignment")
    ax.set_xlabel("test-time step size alpha")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"Test-time alignment step size ({args.name})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}_alignment.png", dpi=110)
    plt.close(fig)
    lines += ["", f"![step size]({args.name}_alignment.png)", ""]
    (args.out / f"{args.name}_alignment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
