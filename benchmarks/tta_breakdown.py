"""Where one test iteration of T2ARec goes (issues 4 and 12): the parts of a batch of 4,096
ML-1M-shaped test users, each the median of several runs after a warm-up. Prints one JSON object
(milliseconds, and ratios to one encode of the batch).

    python benchmarks/tta_breakdown.py
    PYTHONPATH=/path/to/older/src python benchmarks/tta_breakdown.py     # the same against another version

Without alignment an iteration is: encode (last position) + score + rank. With alignment it adds
the test-time step (forward and backward of mu1 L_time + mu2 L_state), and the prediction encodes
again with the adapted parameters.

``reference``: the step by autograd over ``alignment_loss`` (the only step before issue 12), its
forward alone, and three of its parts timed alone, forward and backward, on the same batch: the
per-token final state h_n (``last_state.final_state_from_rows``), L_time and L_state from leaf
inputs; what is left (the per-item table, o_n, the re-fed step, autograd's bookkeeping) is the rest.
``written_out``: the step of ``models/t2arec_step.py`` (``model.fast_step``, issue 12) and its
parts as it times them itself. ``iteration``: whole aligned and plain iterations (``score_batch``
and the ranks), as ``benchmarks/bench.py`` times them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_model, median_seconds, ml1m_like  # noqa: E402  benchmarks/bench.py, beside this script

from t2arec.align import score_batch  # noqa: E402
from t2arec.data.batching import evaluation_examples  # noqa: E402
from t2arec.evaluate import target_ranks  # noqa: E402
from t2arec.experiments.throughput import full_batch  # noqa: E402
from t2arec.runtime import flush_denormals, keep_freed_memory  # noqa: E402


def median_ms(job: Callable[[], Any], repeats: int) -> float:
    return 1000 * median_seconds(job, repeats)


def reference_parts(model, batch, align, repeats: int) -> dict[str, float]:  # noqa: ANN001
    """The autograd step's forward + backward, and its per-token part, L_time and L_state alone."""
    from t2arec.models.last_state import final_state_from_rows

    params = [p for p in model.parameters() if p.requires_grad]

    def loss() -> torch.Tensor:
        with torch.enable_grad():
            return model.alignment_loss(batch, align.mu_time, align.mu_state)

    parts = {"forward_ms": median_ms(loss, repeats),
             "forward_backward_ms": median_ms(
                 lambda: torch.autograd.grad(loss(), params, allow_unused=True, materialize_grads=True), repeats)}
    mixer = model.layers[0].mixer
    d, ds = model.cfg.hidden_size, model.cfg.state_size
    with torch.no_grad():
        o_last, trace = model.encode_last(batch.items)
        x_next, b_next, delta_next = mixer.refeed(o_last, trace.conv_tail)
        table = model.input_table()
    gate = d if model.cfg.output_gate else 0

    def tokens() -> None:
        with torch.enable_grad():
            rows = table[:, gate: gate + d + ds].detach().requires_grad_()
            weight, bias = mixer.conv.weight[: d + ds, 0].detach().requires_grad_(), mixer.conv.bias[: d + ds]
            delta = trace.delta[..., 0].detach().requires_grad_()
            h = final_state_from_rows(rows, batch.items, 0, weight, bias.detach().requires_grad_(), delta,
                                      mixer.A.detach().requires_grad_(), d)
            h.backward(torch.ones_like(h))

    def time_loss() -> None:
        with torch.enable_grad():
            delta, nxt = trace.delta.detach().requires_grad_(), delta_next.detach().requires_grad_()
            model.time_loss(batch, delta, nxt).backward()

    def state_loss() -> None:
        with torch.enable_grad():
            leaf = dataclasses.replace(trace, final_state=trace.final_state.detach().requires_grad_(),
                                       x_last=trace.x_last.detach().requires_grad_())
            leaves = [t.detach().requires_grad_() for t in (x_next, b_next, delta_next)]
            model.state_loss(leaf, *leaves).backward()

    parts["tokens_forward_backward_ms"] = median_ms(tokens, repeats)
    parts["time_loss_forward_backward_ms"] = median_ms(time_loss, repeats)
    parts["state_loss_forward_backward_ms"] = median_ms(state_loss, repeats)
    parts["rest_ms"] = parts["forward_backward_ms"] - sum(
        parts[k] for k in ("tokens_forward_backward_ms", "time_loss_forward_backward_ms", "state_loss_forward_backward_ms"))
    return parts


def rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def written_out_parts(model, batch, align, repeats: int) -> dict[str, float] | None:  # noqa: ANN001
    """The written-out step (models/t2arec_step.py), whole and by its own parts (medians)."""
    try:
        from t2arec.models import t2arec_step
    except ImportError:  # a version before issue 12
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    runs: list[dict[str, float]] = []

    def step() -> None:
        t2arec_step.part_seconds = {}
        model.alignment_gradients(batch, align.mu_time, align.mu_state, params)
        runs.append(t2arec_step.part_seconds)
        t2arec_step.part_seconds = None

    parts = {"forward_backward_ms": median_ms(step, repeats)}
    runs = runs[1:]  # the warm-up
    for name in runs[0]:
        parts[f"{name}_ms"] = 1000 * sorted(r[name] for r in runs)[len(runs) // 2]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args()
    keep_freed_memory()
    flush_denormals()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ml1m_like()
    model, cfg = make_model("t2arec", data, 200)
    model.eval()
    batch = full_batch(evaluation_examples(data, "test", 200), args.batch_size)
    align = cfg.align
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "batch_size": args.batch_size,
                              "repeats": args.repeats}

    with torch.no_grad():
        o_last, _ = model.encode_last(batch.items)
        scores = model.item_scores(o_last)
        parts = {
            "encode_ms": median_ms(lambda: model.encode_last(batch.items), args.repeats),
            "score_ms": median_ms(lambda: model.item_scores(o_last), args.repeats),
            "rank_ms": median_ms(lambda: target_ranks(scores, batch.targets), args.repeats),
        }
    parts["no_tta_iteration_ms"] = parts["encode_ms"] + parts["score_ms"] + parts["rank_ms"]
    report["inference"] = parts
    encode = parts["encode_ms"]

    def in_encodes(section: dict[str, float]) -> dict[str, float]:
        return {**section, "in_encodes": {k.removesuffix("_ms"): v / encode for k, v in section.items()}}

    fast_step = getattr(model.cfg, "fast_step", None)
    if fast_step is not None:
        model.cfg.fast_step = False
    report["reference"] = in_encodes(reference_parts(model, batch, align, args.repeats))
    if fast_step is not None:
        model.cfg.fast_step = True
    written = written_out_parts(model, batch, align, args.repeats)
    if written is not None:
        report["written_out"] = in_encodes(written)

    def iteration(aligned: bool) -> None:
        scores, _ = score_batch(model, batch, align if aligned else None)
        target_ranks(scores, batch.targets)

    whole = {"no_tta_iteration_ms": median_ms(lambda: iteration(False), args.repeats),
             "tta_iteration_ms": median_ms(lambda: iteration(True), args.repeats)}
    whole["tta_over_no_tta"] = whole["no_tta_iteration_ms"] / whole["tta_iteration_ms"]
    report["iteration"] = whole
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
