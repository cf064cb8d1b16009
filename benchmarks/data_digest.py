"""sha256 of the prepared data for a ``--data`` value, to show two versions of the library agree.

    PYTHONPATH=src python benchmarks/data_digest.py ../shared/data/ml-1m.inter
    PYTHONPATH=/tmp/before/src python benchmarks/data_digest.py ../shared/data/ml-1m.inter
    python benchmarks/data_digest.py ../shared/data/amazon-pantry-2018.inter min_count=5 duplicates=drop

Prepares the data as every command does (``pipeline.load_data``; trailing ``key=value`` set
``DataConfig`` fields) and prints one JSON line: the digest over every user's ``items`` and
``times`` (lengths, bytes), the raw-id lists and the report, with the counts, seconds and peak RSS.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time

import numpy as np

from t2arec.config import DataConfig, RunConfig
from t2arec.data.types import SequenceData
from t2arec.pipeline import load_data


def digest(data: SequenceData) -> str:
    """sha256 over sequence lengths, items (int64), times (float64), id lists and report."""
    h = hashlib.sha256(np.array([len(a) for a in data.items], dtype=np.int64).tobytes())
    for arrays, dtype in ((data.items, np.int64), (data.times, np.float64)):
        for array in arrays:
            assert array.dtype == dtype
            h.update(np.ascontiguousarray(array).tobytes())
    h.update(repr(data.item_ids).encode() + repr(data.user_ids).encode())
    h.update(json.dumps(data.report.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def main(argv: list[str]) -> dict:
    fields = dict(arg.split("=", 1) for arg in argv[1:])
    if "min_count" in fields:
        fields["min_count"] = int(fields["min_count"])  # type: ignore[assignment]
    start = time.perf_counter()
    data = load_data(RunConfig(data=DataConfig(path=argv[0], **fields)))  # type: ignore[arg-type]
    result = {"data": argv[0], **{k: v for k, v in fields.items()}, "sha256": digest(data),
              "users": data.num_users, "items": data.num_items, "interactions": data.num_interactions,
              "seconds": round(time.perf_counter() - start, 2),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
