"""Where one test iteration of T2ARec goes (issue 4): the parts of a batch of 4,096 ML-1M-shaped
test users, each the median of several runs after a warm-up. Prints one JSON object (milliseconds).

    python benchmarks/tta_breakdown.py

Without alignment an iteration is: encode (last position) + score + rank. With alignment it adds
the step's forward (encode with gradients + the two losses) and backward, and the prediction
encodes again with the adapted parameters.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import torch

from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import target_ranks
from t2arec.experiments.throughput import full_batch

from bench import make_model, median_seconds, ml1m_like  # benchmarks/bench.py, beside this script


def median_ms(job: Callable[[], Any], repeats: int) -> float:
    return 1000 * median_seconds(job, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    data = ml1m_like()
    model, cfg = make_model("t2arec", data, 200)
    model.eval()
    batch = full_batch(evaluation_examples(data, "test", 200), args.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    align = cfg.align

    def loss() -> torch.Tensor:
        with torch.enable_grad():
            return model.alignment_loss(batch, align.mu_time, align.mu_state)

    with torch.no_grad():
        o_last, _ = model.encode_last(batch.items)
        scores = model.item_scores(o_last)
        parts = {
            "encode_ms": median_ms(lambda: model.encode_last(batch.items), args.repeats),
            "score_ms": median_ms(lambda: model.item_scores(o_last), args.repeats),
            "rank_ms": median_ms(lambda: target_ranks(scores, batch.targets), args.repeats),
        }
    parts["step_forward_ms"] = median_ms(loss, args.repeats)
    parts["step_forward_backward_ms"] = median_ms(
        lambda: torch.autograd.grad(loss(), params, allow_unused=True, materialize_grads=True), args.repeats)
    parts["no_tta_iteration_ms"] = parts["encode_ms"] + parts["score_ms"] + parts["rank_ms"]
    parts["tta_iteration_ms"] = parts["step_forward_backward_ms"] + parts["no_tta_iteration_ms"]
    parts["ratio_from_parts"] = parts["no_tta_iteration_ms"] / parts["tta_iteration_ms"]
    print(json.dumps({key: round(value, 3) for key, value in parts.items()}, indent=2))


if __name__ == "__main__":
    main()
