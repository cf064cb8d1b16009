"""Metrics of served recommendations: `t2arec recommend` output against the held-out targets.

    python benchmarks/score_recommendations.py --recommendations out.jsonl --targets targets.json
    python benchmarks/score_recommendations.py --response response.json --requests requests.jsonl --targets targets.json

The second form reads a `POST /recommend` response to ``body.json``: its results are in the order
of the users in ``requests.jsonl``.

``targets.json`` is written by ``benchmarks/requests_from_checkpoint.py``. A target missing from a
user's top-k counts as a miss, so with ``--k 10`` the @10 metrics equal the evaluator's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from t2arec.evaluate import metrics_from_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recommendations", type=Path, help="JSON lines of `t2arec recommend`, with ids")
    parser.add_argument("--response", type=Path, help="a /recommend response body")
    parser.add_argument("--requests", type=Path, help="with --response: the requests.jsonl giving the ids")
    parser.add_argument("--targets", type=Path, required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    targets = json.loads(args.targets.read_text())
    if args.response:
        if not args.requests:
            raise SystemExit("--response needs --requests (the user ids in request order)")
        ids = [json.loads(line)["id"] for line in args.requests.read_text().splitlines()]
        results = [{"id": user, **result} for user, result in zip(ids, json.loads(args.response.read_text())["results"])]
    elif args.recommendations:
        results = [json.loads(line) for line in args.recommendations.read_text().splitlines()]
    else:
        raise SystemExit("give --recommendations or --response")
    ranks = []
    for number, result in enumerate(results, start=1):
        if "id" not in result:
            raise SystemExit(f"result {number}: no 'id' to find the user's target")
        items = result["items"]
        target = targets[str(result["id"])]
        ranks.append(items.index(target) if target in items else np.iinfo(np.int64).max)
    print(json.dumps({"users": len(ranks), **metrics_from_ranks(np.array(ranks), (args.k,))}, indent=2))


if __name__ == "__main__":
    main()
