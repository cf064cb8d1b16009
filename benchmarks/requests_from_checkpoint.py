"""Write a checkpoint's test split as recommendation requests, to check the service against the evaluator.

    python benchmarks/requests_from_checkpoint.py --checkpoint runs/latest/checkpoint \\
        --jsonl requests.jsonl --body body.json [--users 100]

``requests.jsonl`` has one line per test user for `t2arec recommend` (``id`` = raw user id,
``items``/``timestamps`` = raw ids and seconds before the held-out item, ``now`` = its time);
``body.json`` is one `POST /recommend` body holding the same users, and ``targets.json`` (next to
``--jsonl``) maps each user id to the held-out raw item id. With every test user in one batch,
the ranks of the targets are the evaluator's (`t2arec evaluate`, whose batches are
``align.batch_size`` users).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2arec.checkpoint import load_checkpoint
from t2arec.pipeline import config_from_dict, load_data, remap_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--jsonl", type=Path, required=True)
    parser.add_argument("--body", type=Path)
    parser.add_argument("--users", type=int, default=0, help="only the first N test users (0: all)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    payload = load_checkpoint(args.checkpoint)
    data = remap_items(load_data(config_from_dict(payload["config"])), payload["item_ids"])
    ids = payload["item_ids"]
    count = args.users or len(data.items)
    users, targets = [], {}
    for user, items, times in list(zip(data.user_ids, data.items, data.times))[:count]:
        users.append({"id": user, "items": [ids[i] for i in items[:-1]], "timestamps": times[:-1].tolist(),
                      "now": float(times[-1])})
        targets[str(user)] = ids[items[-1]]
    args.jsonl.write_text("".join(json.dumps(u) + "\n" for u in users))
    (args.jsonl.parent / "targets.json").write_text(json.dumps(targets) + "\n")
    if args.body:
        body = {"users": [{k: u[k] for k in ("items", "timestamps", "now")} for u in users], "k": args.k}
        args.body.write_text(json.dumps(body) + "\n")
    longest = max(len(u["items"]) for u in users)
    print(f"wrote {len(users)} test users (longest history {longest}) to {args.jsonl}"
          + (f" and {args.body} ({args.body.stat().st_size:,} bytes)" if args.body else ""))


if __name__ == "__main__":
    main()
