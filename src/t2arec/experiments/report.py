"""Numbers to text: mean ± std over seeds, the paired t-test, Markdown tables, and the plot style."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of a paired t-test (pairs = seeds); None when it is undefined.

    Undefined means fewer than two pairs, or differences that are all equal up to rounding (zero variance).
    """
    from scipy.stats import ttest_rel

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diffs = a_arr - b_arr
    if len(diffs) < 2 or np.allclose(diffs, diffs[0], rtol=1e-9, atol=1e-12):  # equal up to rounding
        return None
    p = float(ttest_rel(a_arr, b_arr).pvalue)
    return None if math.isnan(p) else p


def fmt_mean_std(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_label(key: str) -> str:
    """'ndcg@10' -> 'NDCG@10'."""
    name, _, k = key.partition("@")
    return {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}.get(name, name) + (f"@{k}" if k else "")


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):  # noqa: ANN201 (matplotlib types)
    """A figure with ``ncols`` panels, drawn off screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path) -> None:  # noqa: ANN001
    """Write a PNG atomically (a crash never leaves half a file)."""
    import io

    import matplotlib.pyplot as plt

    from t2arec.experiments.store import write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
