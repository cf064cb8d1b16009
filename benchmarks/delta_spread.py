"""How much Delta and the log time gaps vary inside a sequence, for a trained checkpoint.

    python benchmarks/delta_spread.py runs/ml100k-lambda1/checkpoint

Prints the mean over test sequences of the absolute difference of Delta, of log1p gaps and of
their product between consecutive real positions: the hinge of L_time is active only when the
product is comparable to lambda.
"""
import sys

import numpy as np
import torch

from t2arec.data.batching import evaluation_examples
from t2arec.pipeline import load_data, load_model, remap_items

model, cfg, payload = load_model(sys.argv[1])
data = remap_items(load_data(cfg), payload["item_ids"])
batch = evaluation_examples(data, "test", cfg.data.max_len).batch(slice(None))
with torch.no_grad():
    _, _, trace = model.encode(batch.items)
both_real = (batch.mask[:, 1:] & batch.mask[:, :-1]).numpy()
d_delta = (trace.delta[:, 1:] - trace.delta[:, :-1]).abs().numpy()[both_real]
d_time = (torch.log1p(batch.gaps[:, 1:]) - torch.log1p(batch.gaps[:, :-1])).abs().numpy()[both_real]
print(f"mean Delta {trace.delta.numpy()[batch.mask.numpy()].mean():.2e}, mean |dDelta| {d_delta.mean():.2e}, "
      f"mean |dT| {d_time.mean():.2f}, mean |dDelta*dT| {np.mean(d_delta * d_time):.2e}")
