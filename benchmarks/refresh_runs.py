"""Re-evaluate finished runs whose results hold a non-finite metric (before the evaluator ranked NaN
scores pessimistically, a diverged test-time step could show up as an infinite NDCG and even be
chosen as the step size). Training is not repeated.

    python benchmarks/refresh_runs.py runs/results
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from t2arec.pipeline import refresh_evaluation


def has_non_finite(value) -> bool:  # noqa: ANN001
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def main() -> None:
    for root in sys.argv[1:]:
        for path in sorted(Path(root).glob("**/results.json")):
            results = json.loads(path.read_text())
            checked = {k: results.get(k) for k in ("valid", "test", "alignment_selection", "segments")}
            if has_non_finite(checked):
                fresh = refresh_evaluation(path.parent)
                step = fresh["alignment"]["lr"]
                print(f"{path.parent}: step {'none' if step is None else f'{step:g}'}, "
                      f"test NDCG@10 {fresh['test']['ndcg@10']:.4f}")
            for variant in sorted(path.parent.glob("variants/*.json")):
                if has_non_finite(json.loads(variant.read_text())):
                    variant.unlink()  # recomputed by the next experiment command
                    print(f"{variant}: removed (non-finite), will be recomputed")


if __name__ == "__main__":
    main()
