"""Table 3: T2ARec without its alignment losses, in training, at test time, or both.

Rows (the paper's; "w/o L_all" removes both losses in training and at test time, the row that in
the paper reproduces Mamba4Rec's numbers):

    full                  training mu (0.1, 1), test-time alignment with mu (1e-2, 1e-1)
    w/o L_all             training mu (0, 0), no test-time alignment
    w/o L_time            L_time dropped in training and at test time
    w/o L_state           L_state dropped in training and at test time
    w/o L_all (test)      the full model, no test-time alignment
    w/o L_time (test)     the full model, test-time alignment on L_state only
    w/o L_state (test)    the full model, test-time alignment on L_time only

Test-time rows of the full model keep the step size it chose on validation, so they differ from
"full" only by the dropped term. When the full model chose no step (no validation gain was
significant), there is no step to keep: those rows choose a step, or none, on validation for the
loss they keep, with the same significance rule. Rows trained anew choose on validation, as every
trained model does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from t2arec.evaluate import paired_test_over_users
from t2arec.experiments.report import fmt_mean_std, markdown_table, mean_std, metric_label
from t2arec.experiments.store import METRICS, Setup, Variant, build_config, ensure_runs, ensure_variant, write_text
from t2arec.pipeline import write_json


@dataclass(frozen=True)
class AblationRow:
    name: str
    variant: Variant  # the trained model
    test_time: str  # "trained": the run's own test result; "none": no alignment; "time"/"state": that loss only


def ablation_rows(model: str = "t2arec") -> list[AblationRow]:
    full = Variant(model)
    return [
        AblationRow("T2ARec (full)", full, "trained"),
        AblationRow("w/o L_all", Variant(model, ("train.mu_time=0", "train.mu_state=0")), "none"),
        AblationRow("w/o L_time", Variant(model, ("train.mu_time=0",)), "state"),
        AblationRow("w/o L_state", Variant(model, ("train.mu_state=0",)), "time"),
        AblationRow("w/o test-time L_all", full, "none"),
        AblationRow("w/o test-time L_time", full, "state"),
        AblationRow("w/o test-time L_state", full, "time"),
    ]


def row_metrics(setup: Setup, row: AblationRow, seed: int, trained: dict[str, Any]) -> dict[str, float]:
    """Test metrics of one ablation row for one seed."""
    if row.test_time == "trained":
        return trained["test"]
    if row.test_time == "none":
        return trained["test_no_tta"]
    align = build_config(setup, row.variant, seed).align
    align = dataclasses.replace(align, mu_time=align.mu_time if row.test_time == "time" else 0.0,
                                mu_state=align.mu_state if row.test_time == "state" else 0.0)
    if row.variant.overrides == () and trained["alignment"]["applied"]:  # same step, only the loss differs
        align = dataclasses.replace(align, lr=trained["alignment"]["lr"], lr_grid=())
    return ensure_variant(setup, row.variant, seed, f"only-{row.test_time}", align)["test"]


def paired_step_tests(setup: Setup, full: Variant, trained: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The test-time rows of the full model as a paired comparison over test users.

    Seeds compare whole trainings and move NDCG@10 by more than a test-time step does; a step taken on
    the same checkpoint can be compared user by user. For each loss set (both, L_state only, L_time
    only), the checkpoint is evaluated with the step it chose on validation or, when it chose none, with
    its best validation grid step forced, against no step; the sign test is two-sided.
    """
    out: dict[str, Any] = {}
    for seed, run in trained.items():
        chosen = run["alignment"].get("chosen") or {}
        step = run["alignment"]["lr"] if run["alignment"]["applied"] else chosen.get("best_grid_lr")
        if step is None:
            continue
        base = dataclasses.replace(build_config(setup, full, seed).align, enabled=True, lr=step, lr_grid=())
        rows = {}
        for losses, mu_time, mu_state in (("both", base.mu_time, base.mu_state), ("state", 0.0, base.mu_state),
                                          ("time", base.mu_time, 0.0)):
            align = dataclasses.replace(base, mu_time=mu_time, mu_state=mu_state)
            variant = ensure_variant(setup, full, seed, f"forced-{losses}", align)
            rows[losses] = {**paired_test_over_users(np.asarray(variant["test_ranks"]),
                                                     np.asarray(variant["test_no_tta_ranks"])),
                            "test": variant["test"], "test_no_tta": variant["test_no_tta"]}
        out[str(seed)] = {"step": step, "chosen_on_validation": bool(run["alignment"]["applied"]), "rows": rows}
    return out


def ablate(setup: Setup, model: str = "t2arec", title: str = "Ablation (Table 3)") -> dict[str, Any]:
    """Train (or reuse) the ablation models; write ablate.json and ablate.md into ``setup.out``."""
    rows = ablation_rows(model)
    variants = list(dict.fromkeys(row.variant for row in rows))
    runs = ensure_runs(setup, variants, "ablate")
    table = {}
    for row in rows:
        per_seed = [row_metrics(setup, row, seed, runs[(row.variant, seed)]) for seed in setup.seeds]
        table[row.name] = {"trained": row.variant.label, "test_time": row.test_time,
                           **{m: dict(zip(("mean", "std"), mean_std([r[m] for r in per_seed])),
                                      values=[r[m] for r in per_seed]) for m in METRICS}}
    summary = {"seeds": setup.seeds, "metrics": list(METRICS), "rows": table,
               "paired": paired_step_tests(setup, Variant(model), {s: runs[(Variant(model), s)] for s in setup.seeds})}
    write_json(setup.out / "ablate.json", summary)
    write_text(setup.out / "ablate.md", to_markdown(summary, title))
    return summary


def to_markdown(summary: dict[str, Any], title: str) -> str:
    seeds = len(summary["seeds"])
    body = [[name, f"`{cells['trained']}`", cells["test_time"],
             *(fmt_mean_std(cells[m]["mean"], cells[m]["std"], seeds) for m in summary["metrics"])]
            for name, cells in summary["rows"].items()]
    header = ["Row", "trained as", "test-time losses", *(metric_label(m) for m in summary["metrics"])]
    return (f"### {title}\n\nTest split, mean ± std over {seeds} seed(s) "
            f"({', '.join(map(str, summary['seeds']))}). Test-time losses: `trained` = both; `time`/`state` = "
            "that loss only; `none` = no alignment. The step size (or no step, when no validation gain is "
            "significant) is chosen on validation, except in the test-time rows of the full model, which "
            "keep its step when it chose one.\n\n"
            + markdown_table(header, body) + "\n" + paired_markdown(summary.get("paired", {})))


def paired_markdown(paired: dict[str, Any]) -> str:
    if not paired:
        return ""
    body = []
    for seed, entry in paired.items():
        how = "chosen on validation" if entry["chosen_on_validation"] else "not chosen on validation; forced"
        for losses, row in entry["rows"].items():
            body.append([seed, f"{entry['step']:g} ({how})", losses, f"{row['test_no_tta']['ndcg@10']:.4f}",
                         f"{row['test']['ndcg@10']:.4f}", f"{row['ndcg_gain']:+.5f}",
                         f"{row['users_helped']} / {row['users_hurt']}", f"{row['p_value']:.3g}"])
    return ("\nThe test-time step on the same checkpoint, paired over test users (two-sided exact sign test on "
            "the users whose NDCG@10 changed):\n\n"
            + markdown_table(["seed", "step", "test-time losses", "NDCG@10 no step", "NDCG@10 with step",
                              "mean gain", "users helped / hurt", "p"], body) + "\n")
